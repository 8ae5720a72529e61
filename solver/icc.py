"""Intraclass correlation of an LMM, as ``performance::icc`` (insight::get_variance) defines it.

With X the fixed-effects model matrix of the fit (n rows, columns after the rank check),
beta_hat, sigma^2 the residual variance and Sigma_k = sigma^2 T_k T_k' the covariance of
random-effects term k:

    var_fixed    = sample variance of X beta_hat over the rows (n - 1 denominator;
                   offsets not included)
    var_random   = sum_k  mean_i z_ik' Sigma_k z_ik  =  sum_k tr(Sigma_k X_k'X_k) / n
    var_residual = sigma^2

    ICC_adjusted    = var_random / (var_random + var_residual)
    ICC_conditional = var_random / (var_fixed + var_random + var_residual)

For a random-intercept term ``z_ik = 1`` and its share is just its variance; for a term
with random slopes ``z_ik`` is row i of X restricted to the term's columns (performance's
definition: the slopes' columns are taken from the *fixed-effects* matrix, a ``(Intercept)``
column of ones added when X has none; a term column that is not a column of X is left
out, e.g. a random slope without a fixed one).  Which terms count, as insight does: those
whose grouping factor has fewer levels than observations, and of several terms on one
grouping factor (``(x || g)`` gives ``(1 | g)`` and ``(0 + x | g)``) only the first, which
is how insight matches ``VarCorr`` names against ``ranef`` names; so the ICC of a
``(Days || Subject)`` fit counts the intercept variance only, as ``performance::icc`` does.

A singular fit (a diagonal element of some T_k below ``tolerance``, 1e-5) has no ICC
(performance returns NA): ``adjusted`` and ``conditional`` are None.

For random-intercept models (every term ``(1 | g)``) the ICC per grouping factor g and the
design effect (Kish) are also given:

    ICC_g  = sigma_g^2 / (var_random + var_residual)     (performance::icc(by_group = TRUE))
    deff_g = 1 + (m_g - 1) ICC_g,    m_g = n / J_g

with m_g the mean cluster size: n observations over the J_g levels of g in the fit.

X beta_hat and X'X come from one pass over the model rows, batch partial sums with an
associative combine (count, mean, sum of squared deviations combined as Chan et al.).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .lmm import LMMFit

INTERCEPT = "(Intercept)"


@dataclass(frozen=True)
class ICC:
    """performance::icc's numbers (None where it gives NA) and design effects."""

    adjusted: float | None
    conditional: float | None
    var_fixed: float
    var_random: float | None
    var_residual: float
    by_group: dict[str, float] = field(default_factory=dict)  # random-intercept models only
    design_effect: dict[str, float] = field(default_factory=dict)
    note: str | None = None


@dataclass(frozen=True)
class RowMoments:
    """Over the model rows: n, mean and squared deviations of X beta, and X'X (unweighted)."""

    n: int
    mean: float
    m2: float
    XtX: np.ndarray

    def combine(self, other: RowMoments) -> RowMoments:
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * other.n / n
        m2 = self.m2 + other.m2 + delta**2 * self.n * other.n / n
        return RowMoments(n, mean, m2, self.XtX + other.XtX)


def icc(fit: LMMFit, tolerance: float = 1e-5) -> ICC:
    """performance::icc(fit): adjusted and conditional ICC, see the module docstring."""
    fixed = list(fit.model.data.fixed_names)
    add_intercept = not any(n.startswith(INTERCEPT) for n in fixed)
    names = [INTERCEPT] * add_intercept + fixed  # X's columns as insight sees them
    moments = row_moments(fit, add_intercept)
    var_fixed = moments.m2 / (moments.n - 1)
    sigma2 = fit.criterion_sigma2()
    if _singular(fit, tolerance):
        note = "singular fit: some variance components are zero, so there is no ICC"
        return ICC(None, None, var_fixed, None, sigma2, note=note)
    Sigmas = [sigma2 * T @ T.T for T in fit.model.tmap.blocks(fit.sol.theta)]
    var_random = _random_variance(fit, Sigmas, moments, names)
    total = var_random + sigma2
    by_group, deff = _by_group(fit, Sigmas, total, moments.n)
    return ICC(
        adjusted=var_random / total,
        conditional=var_random / (var_fixed + total),
        var_fixed=var_fixed,
        var_random=var_random,
        var_residual=sigma2,
        by_group=by_group,
        design_effect=deff,
    )


def row_moments(fit: LMMFit, add_intercept: bool) -> RowMoments:
    """One pass over the model rows: moments of X beta and X'X (unweighted)."""
    data, beta = fit.model.data, fit.sol.beta
    total: RowMoments | None = None
    for rows in data.rows():
        X = rows.X[:, data.kept]
        eta = X @ beta
        if add_intercept:
            X = np.column_stack([np.ones(rows.n), X])
        mean = float(eta.mean())
        part = RowMoments(rows.n, mean, float(np.sum((eta - mean) ** 2)), X.T @ X)
        total = part if total is None else total.combine(part)
    if total is None:
        raise ValueError("no rows")
    return total


def _singular(fit: LMMFit, tolerance: float) -> bool:
    theta = fit.sol.theta
    return bool(np.any(np.abs(theta[fit.model.tmap.diagonal_mask()]) < tolerance))


def _counted_terms(fit: LMMFit) -> list[int]:
    """Terms insight counts: the first one per grouping factor, fewer levels than rows."""
    seen: set[str] = set()
    out = []
    for k, t in enumerate(fit.model.data.design.terms):
        if t.group not in seen and t.nlevels != fit.model.data.cp.n:
            out.append(k)
        seen.add(t.group)
    return out


def _random_variance(
    fit: LMMFit, Sigmas: list[np.ndarray], moments: RowMoments, names: list[str]
) -> float:
    """sum_k tr(Sigma_k X_k'X_k) / n over the counted terms and their columns in X."""
    terms = fit.model.data.design.terms
    total = 0.0
    for k in _counted_terms(fit):
        valid = [j for j, name in enumerate(terms[k].names) if name in names]
        cols = [names.index(terms[k].names[j]) for j in valid]
        S = Sigmas[k][np.ix_(valid, valid)]
        total += float(np.trace(S @ moments.XtX[np.ix_(cols, cols)])) / moments.n
    return total


def _by_group(
    fit: LMMFit, Sigmas: list[np.ndarray], total: float, n: int
) -> tuple[dict[str, float], dict[str, float]]:
    """ICC_g and the design effect 1 + (n / J_g - 1) ICC_g of random-intercept models."""
    terms = fit.model.data.design.terms
    if not all(t.names == (INTERCEPT,) for t in terms):
        return {}, {}
    by_group = {t.group: float(S[0, 0]) / total for t, S in zip(terms, Sigmas)}
    ngroups = fit.result.ngroups
    deff = {g: 1.0 + (n / ngroups[g] - 1.0) * v for g, v in by_group.items()}
    return by_group, deff
