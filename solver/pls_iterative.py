"""PLS at fixed theta with solves instead of a Cholesky factor (``iterative.SchurOperator``).

With G = Lambda'Z'WX, r = Lambda'Z'Wy and full solves  [F, c] = M^-1 [G, r]:

    R_X'R_X = X'WX - G'F                 (= X'WX - R_ZX'R_ZX)
    c_beta  = R_X^-T (X'Wy - G'c)        (R_ZX'c_u = G'c)
    beta    = R_X^-1 c_beta
    pwrss   = y'Wy - r'c - |c_beta|^2     (|c_u|^2 = r'c)
    u       = c - F beta,   b = Lambda u

and log|M| from the stochastic Lanczos estimate, whose Monte Carlo standard error the
solution carries.  The profiled objectives are then those of ``pls``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .crossprod import CrossProducts
from .iterative import SchurOperator
from .pls import PLSSolution, ThetaMap, fixed_effects


@dataclass(frozen=True)
class IterativeSolution(PLSSolution):
    """A PLS solution from solves: ``cu`` and ``RZX`` (which need L) are empty; F and c
    hold M^-1 G and M^-1 r; ``logdet_se`` is the standard error of ``logdet_L``."""

    F: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    c: np.ndarray = field(default_factory=lambda: np.zeros(0))
    logdet_se: float = 0.0


class IterativePLS:
    """The PLS system of one model, solved by PCG with a stochastic log-determinant."""

    def __init__(self, cp: CrossProducts, tmap: ThetaMap, probes: int | None = None) -> None:
        self.tmap, self.cp = tmap, cp
        kwargs = {} if probes is None else {"probes": probes}
        self.factor = SchurOperator(cp.ZtZ, tmap.layout, **kwargs)
        self._ZXY = np.column_stack([cp.ZtX, cp.ZtY])

    @property
    def ordering(self) -> str:
        f = self.factor
        return (
            f"iterative: first term eliminated, PCG and stochastic Lanczos quadrature "
            f"({f.Z.shape[1]} probes, deflation {f.deflation_width}) on the Schur complement, "
            f"{f.nblocks} preconditioner blocks"
        )

    def nnz_L(self) -> int:
        """No factor: the non-zeros of the preconditioner's blocks instead."""
        return int(sum(b.shape[0] * b.shape[1] ** 2 for b in self.factor.clusters.batches))

    def solve(self, theta: np.ndarray) -> IterativeSolution:
        theta = np.asarray(theta, dtype=np.float64)
        lam = self.tmap.Lambda(theta)
        n1 = self.factor.n1
        self.factor.update(float(theta[0]), lam[n1:, n1:])
        GR = np.asarray(lam.T @ self._ZXY)
        FC = self.factor.solve_M(GR)
        p = self.cp.XtX.shape[0]
        G, r, F, c = GR[:, :p], GR[:, p], FC[:, :p], FC[:, p]
        RX, beta, pwrss = fixed_effects(self.cp, G.T @ F, G.T @ c, float(r @ c))
        ld = self.factor.logdet()
        return IterativeSolution(
            theta=theta.copy(), logdet_L=ld.value,
            logdet_RX=float(2.0 * np.sum(np.log(np.diag(RX)))), pwrss=pwrss,
            beta=beta, cu=np.zeros(0), RZX=np.zeros((0, p)), RX=RX, F=F, c=c,
            logdet_se=ld.std_error,
        )  # fmt: skip

    def F(self, sol: PLSSolution) -> np.ndarray:
        """M^-1 Lambda'Z'WX."""
        assert isinstance(sol, IterativeSolution)
        return sol.F

    has_trace_sums = True

    def trace_sums(self, theta: np.ndarray) -> list[np.ndarray]:
        """SB_k, estimated (``SchurOperator.trace_sums``); the operator holds theta."""
        return self.factor.trace_sums(self.tmap.layout)

    def modes(self, sol: PLSSolution) -> tuple[np.ndarray, np.ndarray]:
        """(u, b) = (c - F beta, Lambda u)."""
        assert isinstance(sol, IterativeSolution)
        u = sol.c - sol.F @ sol.beta
        return u, np.asarray(self.tmap.Lambda(sol.theta) @ u)
