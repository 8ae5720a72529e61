"""The gradient of the profiled objective with respect to theta, in closed form.

With M = Lambda'A Lambda + I (A = Z'WZ), G = Lambda'Z'WX, F = M^-1 G,
C = R_X'R_X = X'WX - G'F, u and beta the PLS solution, and parameter j sitting at
entry (a, b) of T_k (so dLambda/dtheta_j = I_{l_k} (x) E_ab):

    d log|M|   / dtheta_j = 2 [ (l_k I - SB_k) T_k^-1 ]_{b,a}
    d pwrss    / dtheta_j = -2 sum_l rz[l, a] u[l, b],        rz = Z'Wy - Z'WX beta - A Lambda u
    d log|C|   / dtheta_j = -2 sum_l Q[(l,a), :] C^-1 F[(l,b), :]',   Q = Z'WX - A Lambda F

    objective' = d log|M| + [REML] d log|C| + nu / pwrss * d pwrss

where SB_k = sum over the levels l of term k of the p_k x p_k diagonal blocks of M^-1.
(The first line uses M^-1 Lambda'A Lambda = I - M^-1; it needs T_k invertible, and a
scalar theta_j at exactly 0 has derivative 0 since the objective is even in it.)

The block sums SB_k are the costly part.  The first term's block M11 of M is block
diagonal (each row has one level of it), so with D = M11, B = M21 and the Schur
complement S = M22 - B D^-1 B':

    SB_1 = sum_l D_l^-1 + [ tr(S^-1 K_ab) ]_ab,   K_ab = (B D^-1)_a (B D^-1)_b'
    SB_k = sum_l (S^-1)_ll                         (k >= 2)

and S^-1 is the trailing block of M^-1, from the ``SchurFactor``'s dense Cholesky of S
(``SchurFactor.block_sums``); the iterative path estimates them by stochastic traces.
``pls.trace_sums(theta)`` gives them either way.  With a CHOLMOD factor (large or sparse
S) the gradient is not offered and the optimizer falls back to derivative-free BOBYQA.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .pls import PLS, Criterion, PLSSolution, ThetaMap, lower_colmajor
from .pls_iterative import IterativePLS


def gradient_available(pls: PLS | IterativePLS) -> bool:
    """The Schur factor gives the closed form, the iterative path an estimate of it
    (its SB_k by stochastic traces); CHOLMOD does not."""
    return pls.has_trace_sums


def gradient(pls: PLS | IterativePLS, crit: Criterion, sol: PLSSolution) -> np.ndarray | None:
    """d objective / d theta at ``sol`` (the factor must hold ``sol.theta``); None where
    a vector term's T_k is (nearly) singular and the closed form does not hold."""
    tmap, cp = pls.tmap, pls.cp
    if any(T.shape[0] > 1 and nearly_singular(T) for T in tmap.blocks(sol.theta)):
        return None
    u, b = pls.modes(sol)
    F = pls.F(sol)
    Q = cp.ZtX - A_times(pls, np.asarray(tmap.Lambda(sol.theta) @ F))
    rz = cp.ZtY - cp.ZtX @ sol.beta - A_times(pls, b)
    Cinv = np.linalg.inv(sol.RX.T @ sol.RX) if crit.p else np.zeros((0, 0))
    CF = F @ Cinv
    dlogM = dlogdet_M_entries(pls, sol.theta)
    out = np.zeros(len(sol.theta))
    for j, (a, c, idx) in enumerate(theta_entries(tmap)):
        dpwrss = -2.0 * float(rz[idx[:, a]] @ u[idx[:, c]])
        out[j] = dlogM[j] + crit.nu / sol.pwrss * dpwrss
        if crit.reml:
            out[j] += -2.0 * float(np.sum(Q[idx[:, a]] * CF[idx[:, c]]))
    return out


def theta_entries(tmap: ThetaMap) -> Iterator[tuple[int, int, np.ndarray]]:
    """Each theta_j as (a, c, idx): it sits at T_k[a, c], and idx (levels x p_k) holds
    the positions in u of term k's levels, so (dLambda/dtheta_j x)[idx[:, a]] = x[idx[:, c]]."""
    layout = tmap.layout
    for k in range(len(layout.p)):
        p, nl, off = layout.p[k], layout.nlevels[k], layout.offsets[k]
        idx = off + np.arange(nl)[:, None] * p + np.arange(p)[None, :]
        for a, c in zip(*lower_colmajor(p)):
            yield int(a), int(c), idx


def dlogdet_M_entries(pls: PLS | IterativePLS, theta: np.ndarray) -> np.ndarray:
    """d log|M| / d theta_j at fixed weights, from the block sums SB_k (the factor must
    hold theta)."""
    sums = pls.trace_sums(theta)
    layout = pls.tmap.layout
    out = []
    for k, T in enumerate(pls.tmap.blocks(theta)):
        D = _dlogdet_M(T, sums[k], layout.nlevels[k])
        a, c = lower_colmajor(layout.p[k])
        out.append(D[a, c])
    return np.concatenate(out) if out else np.zeros(0)


def nearly_singular(T: np.ndarray) -> bool:
    d = np.abs(np.diag(T))
    return bool(d.min() <= 1e-6 * max(1.0, float(np.abs(T).max())))


def _dlogdet_M(T: np.ndarray, SB: np.ndarray, nl: int) -> np.ndarray:
    """Matrix whose [a, b] entry is d log|M| / d T[a, b]."""
    p = T.shape[0]
    if p == 1 and T[0, 0] == 0.0:
        return np.zeros((1, 1))  # the objective is even in a scalar theta_j
    return 2.0 * ((nl * np.eye(p) - SB) @ np.linalg.inv(T)).T


def forward_gradient(
    f: Callable[[np.ndarray], float], x: np.ndarray, fx: float, h: float = 1e-7
) -> np.ndarray:
    """Forward differences (upward, so a parameter at its lower bound stays feasible)."""
    out = np.empty(len(x))
    for j in range(len(x)):
        step = h * max(1.0, abs(x[j]))
        e = np.zeros(len(x))
        e[j] = step
        out[j] = (f(x + e) - fx) / step
    return out


def A_times(pls: PLS | IterativePLS, x: np.ndarray) -> np.ndarray:
    """(Z'WZ) x with Z'WZ stored as its lower triangle."""
    A = pls.cp.ZtZ
    return np.asarray(A @ x + A.T @ x - A.diagonal().reshape(-1, *([1] * (x.ndim - 1))) * x)
