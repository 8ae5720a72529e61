"""The fit's summary, built in one place, with lme4's definitions.

sigma^2   = pwrss / (n - p) (REML)  or  pwrss / n (ML)
vcov(beta)= sigma^2 R_X^-1 R_X^-T                     std_error = sqrt(diag)
Sigma_k   = sigma^2 T_k T_k'                          (variance components)
logLik    = -objective / 2     (REML log-likelihood for REML fits, as lme4)
AIC       = -2 logLik + 2 k,   BIC = -2 logLik + k log(n),   k = p + len(theta) + 1
deviance  = ML deviance at the estimates (for a REML fit: lme4's deviance(m, REML = FALSE))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import scipy.linalg as la

from .optimize import Diagnostic
from .pls import Criterion, PLSSolution

if TYPE_CHECKING:
    from .glmm import GeneralizedLinearMixedModel
    from .lmm import LinearMixedModel
    from .model import ModelData


@dataclass(frozen=True)
class FixedEffect:
    term: str
    estimate: float
    std_error: float
    statistic: float


@dataclass(frozen=True)
class VarianceComponent:
    """A variance (term2 None) or a covariance/correlation row, as.data.frame(VarCorr)."""

    group: str
    term: str | None
    term2: str | None
    variance: float | None
    sd: float | None
    corr: float | None


@dataclass(frozen=True)
class FitDiagnostics:
    """How the fit went: lme4's checks, the optimizer's work and the factor's size."""

    checks: list[Diagnostic]
    optimizer: str
    evaluations: int
    q: int
    nnz_ZtZ: int
    nnz_L: int
    ordering: str


@dataclass(frozen=True)
class FitResult:
    formula: str
    family: str
    link: str
    method: str
    nobs: int
    ngroups: dict[str, int]
    fixed_effects: list[FixedEffect]
    variance_components: list[VarianceComponent]
    theta: list[float]
    sigma: float | None
    loglik: float
    aic: float
    bic: float
    deviance: float
    reml_criterion: float | None
    converged: bool
    singular: bool
    messages: list[str]
    diagnostics: FitDiagnostics
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract of DESIGN.md §5 (plus ``diagnostics``)."""
        return asdict(self)


def json_safe(obj: Any) -> Any:
    """JSON has no NaN or Infinity: null for them, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


def build_result(
    model: LinearMixedModel,
    sol: PLSSolution,
    checks: list[Diagnostic],
    evaluations: int,
    optimizer: str,
) -> FitResult:
    data, crit = model.data, model.criterion
    sigma = math.sqrt(crit.sigma2(sol))
    value = crit(sol)
    ml_dev = Criterion(False, crit.n, crit.p, crit.sum_log_w)(sol)
    loglik = -value / 2.0
    k = crit.p + len(sol.theta) + 1
    return FitResult(
        formula=data.formula.text,
        family="gaussian",
        link="identity",
        method="REML" if model.reml else "ML",
        nobs=crit.n,
        ngroups=_ngroups(data),
        fixed_effects=_fixed_effects(data, sol, sigma),
        variance_components=_variance_components(model, sol, sigma),
        theta=[float(t) for t in sol.theta],
        sigma=sigma,
        loglik=loglik,
        aic=-2.0 * loglik + 2.0 * k,
        bic=-2.0 * loglik + k * math.log(crit.n),
        deviance=ml_dev,
        reml_criterion=value if model.reml else None,
        converged=_converged(checks),
        singular=_singular(checks),
        messages=_messages(data.messages, checks),
        diagnostics=_diagnostics(model, checks, optimizer, evaluations),
    )


def evaluation_timings(evaluation_s: Sequence[float]) -> dict[str, float]:
    """For a fit's ``timings``: how many evaluations of the objective (and gradient) the
    fit made, the checks' included, the first's seconds (on the iterative path it also
    chooses the deflation) and the median's; nothing where they were not recorded."""
    if not evaluation_s:
        return {}
    return {
        "evaluations": len(evaluation_s),
        "first_evaluation_s": float(evaluation_s[0]),
        "evaluation_s": float(np.median(evaluation_s)),
    }


def _converged(checks: list[Diagnostic]) -> bool:
    return not any(d.severity in ("warning", "error") for d in checks)


def _singular(checks: list[Diagnostic]) -> bool:
    return any(d.code == "singular" for d in checks)


def _messages(notes: Sequence[str], checks: list[Diagnostic]) -> list[str]:
    """Notes on the data and the fit, then every check that is not a plain pass."""
    found = [d.message for d in checks if d.severity != "info" or d.code == "singular"]
    return list(notes) + found


def _diagnostics(
    model: LinearMixedModel | GeneralizedLinearMixedModel,
    checks: list[Diagnostic],
    optimizer: str,
    evaluations: int,
) -> FitDiagnostics:
    layout = model.data.layout
    return FitDiagnostics(
        checks=checks,
        optimizer=optimizer,
        evaluations=evaluations,
        q=layout.q,
        nnz_ZtZ=2 * model.data.cp.ZtZ.nnz - layout.q,  # stored as its lower triangle
        nnz_L=model.pls.nnz_L(),
        ordering=model.pls.ordering,
    )


def _ngroups(data: ModelData) -> dict[str, int]:
    out: dict[str, int] = {}
    for t, counts in zip(data.design.terms, data.cp.level_counts):
        out.setdefault(t.group, int(np.count_nonzero(counts)))
    return out


def _fixed_effects(data: ModelData, sol: PLSSolution, sigma: float) -> list[FixedEffect]:
    if not len(sol.beta):
        return []
    RXinv = la.solve_triangular(sol.RX, np.eye(len(sol.beta)))
    se = sigma * np.sqrt(np.sum(RXinv**2, axis=1))
    return [FixedEffect(n, float(b), float(s), float(b / s))
            for n, b, s in zip(data.fixed_names, sol.beta, se)]  # fmt: skip


def _group_labels(data: ModelData) -> list[str]:
    """lme4's VarCorr names: a repeated grouping factor gets .1, .2, ..."""
    seen: dict[str, int] = {}
    out = []
    for t in data.design.terms:
        k = seen.get(t.group, 0)
        out.append(t.group if k == 0 else f"{t.group}.{k}")
        seen[t.group] = k + 1
    return out


def _variance_components(
    model: LinearMixedModel, sol: PLSSolution, sigma: float
) -> list[VarianceComponent]:
    out = []
    terms = model.data.design.terms
    for name, t, T in zip(_group_labels(model.data), terms, model.tmap.blocks(sol.theta)):
        out.extend(_term_components(name, t.names, sigma**2 * T @ T.T))
    out.append(VarianceComponent("Residual", None, None, sigma**2, sigma, None))
    return out


def _term_components(group: str, names: tuple[str, ...], S: np.ndarray) -> list[VarianceComponent]:
    """Variances, then covariances with correlations, of one term (as.data.frame(VarCorr))."""
    sd = np.sqrt(np.diag(S))
    out = [VarianceComponent(group, names[i], None, float(S[i, i]), float(sd[i]), None)
           for i in range(len(names))]  # fmt: skip
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            denom = sd[i] * sd[j]
            corr = float(S[i, j] / denom) if denom > 0 else float("nan")
            out.append(VarianceComponent(group, names[i], names[j], float(S[i, j]), None, corr))
    return out


def ranef_table(data: ModelData, b: np.ndarray, var: np.ndarray | None) -> pa.Table:
    """One row per (group, level, term): lme4's as.data.frame(ranef(m, condVar = TRUE))."""
    cols: dict[str, list] = {"group": [], "level": [], "term": [], "condval": [], "condsd": []}
    layout = data.layout
    for t, off in zip(data.design.terms, layout.offsets):
        block = slice(off, off + t.p * t.nlevels)
        vals = b[block].reshape(t.nlevels, t.p)
        sds = np.sqrt(var[block]).reshape(t.nlevels, t.p) if var is not None else None
        for j, term in enumerate(t.names):
            cols["group"].append(np.full(t.nlevels, t.group, dtype=object))
            cols["level"].append(np.asarray(t.labels, dtype=object))
            cols["term"].append(np.full(t.nlevels, term, dtype=object))
            cols["condval"].append(vals[:, j])
            cols["condsd"].append(sds[:, j] if sds is not None else np.full(t.nlevels, np.nan))
    return pa.table({k: pa.array(np.concatenate(v)) for k, v in cols.items()})


def glmm_result(
    model: GeneralizedLinearMixedModel,
    theta: np.ndarray,
    beta: np.ndarray,
    laplace: float,
    vcov: np.ndarray,
    checks: list[Diagnostic],
    evaluations: int,
    optimizer: str,
) -> FitResult:
    """lme4's glmer summary: logLik = -(family aic + |u|^2 + log|L|^2) / 2 (Laplace);
    deviance = sum of the deviance residuals at the conditional modes (lme4's drsum)."""
    data, st, fam = model.data, model.state, model.family
    loglik = -laplace / 2.0
    k = len(beta) + len(theta)
    n = len(model.y)
    se = np.sqrt(np.diag(vcov)) if len(beta) else np.zeros(0)
    return FitResult(
        formula=data.formula.text,
        family=fam.name,
        link=fam.link.name,
        method="Laplace",
        nobs=n,
        ngroups=_ngroups(data),
        fixed_effects=[
            FixedEffect(t, float(b), float(s), float(b / s))
            for t, b, s in zip(data.fixed_names, beta, se)
        ],  # fmt: skip
        variance_components=_glmm_components(data, model.tmap.blocks(theta)),
        theta=[float(t) for t in theta],
        sigma=None,
        loglik=loglik,
        aic=-2.0 * loglik + 2.0 * k,
        bic=-2.0 * loglik + k * math.log(n),
        deviance=st.devres,
        reml_criterion=None,
        converged=_converged(checks),
        singular=_singular(checks),
        messages=_messages([*data.messages, *model.notes], checks),
        diagnostics=_diagnostics(model, checks, optimizer, evaluations),
    )


def _glmm_components(data: ModelData, blocks: list[np.ndarray]) -> list[VarianceComponent]:
    """Sigma_k = T_k T_k' (no residual variance in a GLMM)."""
    out = []
    for name, t, T in zip(_group_labels(data), data.design.terms, blocks):
        out.extend(_term_components(name, t.names, T @ T.T))
    return out
