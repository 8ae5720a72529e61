"""The PLS system at new weights by conjugate gradients, preconditioned by an earlier factor.

PIRLS solves, at theta and the working weights W of its current iterate, the PLS system

    A [u; beta] = [Lambda'Z'Wz; X'Wz],
    A = [ Lambda'Z'WZ Lambda + I   Lambda'Z'WX ]
        [ X'WZ Lambda              X'WX        ]

(only the u block when beta is held fixed).  Its Newton step from (u, beta) solves
A delta = r with r the score, the residual of the system at (u, beta):

    r = [Lambda'Z'v - u; X'v],    v = W (z - eta + offset) = wt mu_eta (y - mu) / variance(mu)

and the Newton decrement r'A^-1 r is the decrease of the penalized deviance the step
predicts.  The factor PLS holds from an earlier (theta0, W0) (L, R_ZX, R_X) applies

    P^-1 r:  c_u = L^-1 P r_u,  beta = R_X^-1 R_X^-T (r_beta - R_ZX' c_u),
             u = P' L^-T (c_u - R_ZX beta)

exactly, so  P = A(theta0, W0),  close to A when theta and the weights have moved
little: conjugate gradients preconditioned by P then converge in a few products with A
(each two sparse products with Z), and no new factorization is needed until the modes
are found, where the log-determinant needs one.  Near the modes the decrement r'P^-1 r
~ r'A^-1 r tells PIRLS when to stop, and the chord step P^-1 r finishes it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp

from .pls import PLSSolution

Operator = Callable[[np.ndarray], np.ndarray]


class PLSOperator:
    """v -> A v for the PLS system at theta and working weights w, through the rows:

        A [v_u; v_beta] = [Lambda'Z'(w o t) + v_u;  X'(w o t)],   t = Z Lambda v_u + X v_beta

    (over u alone, t = Z Lambda v_u, when X has no columns): two sparse products with
    Z per product, and no cross-products to form for a PIRLS step."""

    def __init__(self, Z: sp.csr_matrix, Zt: sp.csr_matrix, X: np.ndarray, w: np.ndarray,
                 Lambda: sp.csc_matrix) -> None:  # fmt: skip
        self.Z, self.Zt, self.X, self.w = Z, Zt, X, w
        self.Lambda, self.LambdaT = Lambda, Lambda.T.tocsr()
        self.q = Z.shape[1]

    def __call__(self, v: np.ndarray) -> np.ndarray:
        q, p = self.q, self.X.shape[1]
        t = self.Z @ (self.Lambda @ v[:q])
        if p:
            t += self.X @ v[q:]
        t *= self.w
        out = np.empty_like(v)
        out[:q] = self.LambdaT @ (self.Zt @ t) + v[:q]
        if p:
            out[q:] = self.X.T @ t
        return out


class FactorPreconditioner:
    """r -> P^-1 r with P the PLS system whose factor ``factor`` holds (the one ``sol``
    was solved with); over u alone when ``with_beta`` is False."""

    def __init__(self, factor, sol: PLSSolution, with_beta: bool) -> None:
        self.factor, self.sol = factor, sol
        self.p = sol.RX.shape[0] if with_beta else 0

    def __call__(self, r: np.ndarray) -> np.ndarray:
        return self.solve(r[:, None])[:, 0]

    def solve(self, R: np.ndarray) -> np.ndarray:
        """P^-1 R for the columns of R ((q [+ p]) x m)."""
        p, sol = self.p, self.sol
        q = R.shape[0] - p
        cu = self.factor.half_solve(np.ascontiguousarray(R[:q]))
        out = np.empty_like(R)
        if p:
            cb = la.solve_triangular(sol.RX, R[q:] - sol.RZX.T @ cu, trans="T")
            out[q:] = la.solve_triangular(sol.RX, cb)
            cu = cu - sol.RZX @ out[q:]
        out[:q] = self.factor.half_solve_t(cu)
        return out


def pcg(
    A: Operator,
    Pinv: Operator,
    r: np.ndarray,
    z: np.ndarray,
    rtol: float,
    maxiter: int,
    atol: float = 0.0,
) -> tuple[np.ndarray | None, int]:
    """x with A x = r by conjugate gradients preconditioned by P (z = P^-1 r given),
    stopped when the residual's P^-1-norm is below ``rtol`` times r's or below ``atol``
    (then x = z if r itself is); (None, maxiter) when it is not within ``maxiter``
    products with A, else (x, products)."""
    rz = float(r @ z)
    stop = max(rtol * rtol * rz, atol * atol)
    if rz <= stop:
        return z.copy(), 0
    x = np.zeros_like(r)
    r = r.copy()
    d = z.copy()
    for k in range(1, maxiter + 1):
        Ad = A(d)
        dAd = float(d @ Ad)
        if not dAd > 0:  # A or P not positive definite along d
            return None, k
        alpha = rz / dAd
        x += alpha * d
        r -= alpha * Ad
        z = Pinv(r)
        rz_new = float(r @ z)
        if rz_new <= stop:
            return x, k
        d *= rz_new / rz
        d += z
        rz = rz_new
    return None, maxiter
