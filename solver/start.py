"""Starting values for theta from one-term fits (models whose terms are all scalar).

Term k alone, y ~ X + (1 | g_k), has a diagonal M = D = theta^2 a + 1 (a = diag of
Z_k'WZ_k), so its profiled objective costs O(levels) per theta, from the cross-products:

    R_ZX = theta Z_k'WX / sqrt(d),   c_u = theta Z_k'Wy / sqrt(d),   logdet_L = sum log d
    R_X'R_X = X'WX - R_ZX'R_ZX,      c_beta = R_X^-T (X'Wy - R_ZX'c_u)
    pwrss = y'Wy - |c_u|^2 - |c_beta|^2                       (``pls`` with one term)

minimized over log theta by a bounded scalar search.  Alone, term k's residual
variance sigma_k^2 also holds the other terms' variances s_j^2 = theta_j^2 sigma_j^2
(nearly so for crossed terms), so the joint model's

    sigma^2 ~ mean_k ( sigma_k^2 - sum_{j != k} s_j^2 ),     theta_k = s_k / sigma

InstEval: (0.27, 0.44, 0.13) against the optimum's (0.28, 0.44, 0.09), where lme4
starts at (1, 1, 1); Newton's method then needs two steps fewer.  Nested terms share
variance less evenly; the start is still a point of the search, no more.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg as la
from scipy.optimize import minimize_scalar

from .crossprod import CrossProducts
from .pls import Criterion, PLSSolution, ThetaMap, solution

LOG_RANGE = (math.log(1e-3), math.log(1e2))  # the one-term searches' range of theta
THETA_RANGE = (1e-2, 1e2)  # where a start is clipped to


def one_term_starts(cp: CrossProducts, tmap: ThetaMap, crit: Criterion) -> np.ndarray | None:
    """theta's start from one-term fits (module docstring); None unless every term is
    scalar and there are at least two."""
    layout = tmap.layout
    if not tmap.is_diagonal or len(layout.p) < 2:
        return None
    a = cp.ZtZ.diagonal()
    fits = []
    for off, nl in zip(layout.offsets, layout.nlevels):
        block = slice(off, off + nl)
        fits.append(_one_term(cp, a[block], cp.ZtX[block], cp.ZtY[block], crit))
    theta = np.array([t for t, _ in fits])
    sigma2_k = np.array([s for _, s in fits])
    s2 = theta**2 * sigma2_k
    sigma2 = float(np.mean(sigma2_k - (s2.sum() - s2)))
    sigma2 = max(sigma2, 1e-2 * float(sigma2_k.min()))
    return np.clip(np.sqrt(s2 / sigma2), *THETA_RANGE)


def _one_term(
    cp: CrossProducts, a: np.ndarray, ZX: np.ndarray, Zy: np.ndarray, crit: Criterion
) -> tuple[float, float]:
    """(theta, sigma^2) of y ~ X + (1 | g) at its optimum."""

    def objective(log_theta: float) -> float:
        sol = _solution(cp, a, ZX, Zy, math.exp(log_theta))
        return crit(sol) if sol is not None else math.inf

    res = minimize_scalar(objective, bounds=LOG_RANGE, method="bounded",
                          options={"xatol": 1e-3})  # fmt: skip
    theta = math.exp(float(res.x))
    sol = _solution(cp, a, ZX, Zy, theta)
    return theta, (crit.sigma2(sol) if sol is not None else 1.0)


def _solution(
    cp: CrossProducts, a: np.ndarray, ZX: np.ndarray, Zy: np.ndarray, theta: float
) -> PLSSolution | None:
    """The one-term PLS solution at theta (None where R_X'R_X is not positive definite)."""
    d = theta * theta * a + 1.0
    scale = theta / np.sqrt(d)
    RZX, cu = ZX * scale[:, None], Zy * scale
    try:
        return solution(cp, np.array([theta]), float(np.sum(np.log(d))), RZX, cu)
    except la.LinAlgError:
        return None
