"""Satterthwaite degrees of freedom for t-tests of fixed effects, as lmerTest computes them.

The variance parameters are varpar = (theta, sigma).  lmerTest's ``devfun_vp`` is the
deviance at theta and sigma, beta and u at their PLS values for theta (not profiled over
sigma):

    D(varpar) = log|L|^2 + pwrss(theta) / sigma^2 + n log(2 pi sigma^2)
                [REML: + log|R_X|^2 - p log(2 pi sigma^2)]

and ``get_covbeta`` the covariance of beta_hat at varpar:

    C(varpar) = sigma^2 R_X^-1 R_X^-T          (R_X from the PLS solve at theta)

At the estimates, with H the Hessian of D and J_i = dC/dvarpar_i (both by numDeriv's
Richardson extrapolation, see ``richardson``):

    A = 2 H^+        (asymptotic covariance of varpar; H inverted over its eigenvalues > 1e-8)

and for a contrast L (a row of the identity for one coefficient), lmerTest's ``contest1D``:

    v   = L' C L,   g_i = L' J_i L,   df = 2 v^2 / (g' A g)
    t   = L' beta_hat / sqrt(v),      p = 2 P(T_df > |t|)

Each evaluation of D or C at a new theta is one PLS solve (cached by theta; steps in
sigma alone need none): about 8 per theta component for the Hessian's diagonal, 8 per pair
of components off it, and 8 per component for the Jacobian.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg as la
from scipy import stats

from .factor import limited_blas
from .pls import PLSSolution
from .richardson import hessian, jacobian

if TYPE_CHECKING:
    from .lmm import LinearMixedModel, LMMFit

EIGEN_TOL = 1e-8  # lmerTest's tol: eigenvalues of H at or below it are left out of H^+


@dataclass(frozen=True)
class TTest:
    """One row of lmerTest's coefficient table."""

    term: str
    estimate: float
    std_error: float
    df: float
    statistic: float
    p_value: float


@dataclass(frozen=True)
class VarparCovariance:
    """What every Satterthwaite test of one fit needs (lmerTest's lmerModLmerTest slots)."""

    names: tuple[str, ...]
    beta: np.ndarray
    vcov_beta: np.ndarray  # C at the estimates
    jacobian: np.ndarray  # (len(varpar), p, p): dC / dvarpar_i
    vcov_varpar: np.ndarray  # A = 2 H^+
    hessian_eigenvalues: np.ndarray

    def test(self, L: np.ndarray, term: str = "") -> TTest:
        """The Satterthwaite t-test of L' beta = 0."""
        L = np.asarray(L, dtype=float)
        v = float(L @ self.vcov_beta @ L)
        g = np.einsum("i,kij,j->k", L, self.jacobian, L)
        denom = float(g @ self.vcov_varpar @ g)
        df = 2.0 * v**2 / denom if denom > 0 else math.inf  # C does not vary: a z-test
        estimate = float(L @ self.beta)
        t = estimate / math.sqrt(v)
        p = float(2.0 * stats.t.sf(abs(t), df))
        return TTest(term, estimate, math.sqrt(v), df, t, p)


def satterthwaite(fit: LMMFit) -> list[TTest]:
    """lmerTest's summary table: one Satterthwaite t-test per fixed effect."""
    cov = varpar_covariance(fit)
    eye = np.eye(len(cov.beta))
    return [cov.test(eye[j], name) for j, name in enumerate(cov.names)]


def varpar_covariance(fit: LMMFit) -> VarparCovariance:
    """The Hessian of D and the Jacobian of C at (theta_hat, sigma_hat)."""
    at = _AtVarpar(fit.model)
    varpar = np.append(fit.sol.theta, math.sqrt(fit.criterion_sigma2()))
    with limited_blas(fit.model.pls.factor):
        H = hessian(at.deviance, varpar)
        J = jacobian(at.covbeta, varpar)
    p = len(fit.sol.beta)
    evals, evecs = la.eigh(H)
    keep = evals > EIGEN_TOL
    Hplus = (evecs[:, keep] / evals[keep]) @ evecs[:, keep].T
    return VarparCovariance(
        names=fit.model.data.fixed_names,
        beta=fit.sol.beta,
        vcov_beta=at.covbeta(varpar).reshape(p, p),
        jacobian=J.T.reshape(len(varpar), p, p),
        vcov_varpar=2.0 * Hplus,
        hessian_eigenvalues=evals,
    )


class _AtVarpar:
    """D and C as functions of varpar, with the PLS solves cached by theta."""

    def __init__(self, model: LinearMixedModel) -> None:
        self.model = model
        self.n = model.criterion.n
        self.p = model.criterion.p
        self._solutions: dict[bytes, PLSSolution] = {}

    def solve(self, theta: np.ndarray) -> PLSSolution:
        key = np.ascontiguousarray(theta).tobytes()
        if key not in self._solutions:
            self._solutions[key] = self.model.solve(theta)
        return self._solutions[key]

    def deviance(self, varpar: np.ndarray) -> float:
        sol = self.solve(varpar[:-1])
        s2 = varpar[-1] ** 2
        dev = sol.logdet_L + sol.pwrss / s2 + self.n * math.log(2.0 * math.pi * s2)
        if self.model.reml:
            dev += sol.logdet_RX - self.p * math.log(2.0 * math.pi * s2)
        return dev

    def covbeta(self, varpar: np.ndarray) -> np.ndarray:
        sol = self.solve(varpar[:-1])
        RXinv = la.solve_triangular(sol.RX, np.eye(self.p))
        return (varpar[-1] ** 2 * RXinv @ RXinv.T).ravel()
