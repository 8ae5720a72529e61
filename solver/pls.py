"""Penalized least squares at fixed theta, from the cross-products (lme4, JSS 2015 §3).

    Lambda_theta = blockdiag_k( I_{l_k} (x) T_k ),  T_k lower triangular from theta
    L L'      = P (Lambda' Z'WZ Lambda + I) P'           CHOLMOD: analyse once, refactor per theta
    L R_ZX    = P Lambda' Z'WX
    R_X'R_X   = X'WX - R_ZX' R_ZX
    c_u       = L^-1 P Lambda' Z'Wy
    c_beta    = R_X^-T (X'Wy - R_ZX' c_u)
    beta      = R_X^-1 c_beta,   u = P' L^-T (c_u - R_ZX beta),   b = Lambda u
    pwrss     = y'Wy - |c_u|^2 - |c_beta|^2

Profiled objectives (``sum_log_w`` = sum(log w), as lme4 subtracts it):

    ML    d(theta)  = logdet_L + n (1 + log(2 pi pwrss / n))           - sum_log_w
    REML  dR(theta) = logdet_L + logdet_RX + nu (1 + log(2 pi pwrss / nu)) - sum_log_w,  nu = n - p

with logdet_L = log|L|^2 and logdet_RX = log|R_X|^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp
from sksparse.cholmod import CholmodTooLargeError

from .crossprod import CrossProducts, TermLayout
from .errors import InputError
from .factor import (
    MAX_DENSE_SCHUR,
    SMALL_SCHUR,
    CholmodFactor,
    MappedSchurFactor,
    SchurFactor,
    trailing_terms,
)

MAX_DENSE_BYTES = 4 * 2**30  # a trailing block that fills in densely beyond this is refused
SCHUR_DENSE = 0.05  # a denser pattern of S fills in anyway: factor it dense


class FactorTooLarge(InputError):
    """The exact factor would not fit in memory or time; names the size."""


def lower_colmajor(p: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of the lower triangle of a p x p matrix, column by column."""
    pairs = [(i, j) for j in range(p) for i in range(j, p)]
    return np.array([i for i, _ in pairs], dtype=int), np.array([j for _, j in pairs], dtype=int)


@dataclass(frozen=True)
class ThetaMap:
    """theta -> T_k -> Lambda.  theta lists each T_k's lower triangle, column-major.

    ``Lambda.data = theta[lind]`` with a pattern fixed at construction (lme4's Lind).
    """

    layout: TermLayout
    pattern: sp.csc_matrix
    lind: np.ndarray

    @classmethod
    def build(cls, layout: TermLayout) -> ThetaMap:
        rows, cols, tidx = [], [], []
        t0 = 0
        for off, p, nl in zip(layout.offsets, layout.p, layout.nlevels):
            r, c = lower_colmajor(p)
            base = off + np.arange(nl)[:, None] * p
            rows.append((base + r[None, :]).ravel())
            cols.append((base + c[None, :]).ravel())
            tidx.append(np.tile(t0 + np.arange(len(r)), nl))
            t0 += len(r)
        order = np.concatenate(tidx)
        pos = np.arange(1, len(order) + 1, dtype=np.float64)
        q = layout.q
        pattern = sp.csc_matrix((pos, (np.concatenate(rows), np.concatenate(cols))), shape=(q, q))
        lind = order[pattern.data.astype(np.int64) - 1]
        return cls(layout, pattern, lind)

    @property
    def size(self) -> int:
        return int(sum(p * (p + 1) // 2 for p in self.layout.p))

    @property
    def is_diagonal(self) -> bool:
        return all(p == 1 for p in self.layout.p)

    def diagonal_mask(self) -> np.ndarray:
        """True where theta holds a diagonal element of some T_k."""
        return np.concatenate([r == c for r, c in (lower_colmajor(p) for p in self.layout.p)])

    def lower(self) -> np.ndarray:
        """Bounds: 0 for diagonal elements of T_k, -inf off the diagonal."""
        return np.where(self.diagonal_mask(), 0.0, -np.inf)

    def start(self) -> np.ndarray:
        """lme4's start: 1 on the diagonal of each T_k, 0 off it."""
        return self.diagonal_mask().astype(np.float64)

    def blocks(self, theta: np.ndarray) -> list[np.ndarray]:
        """The T_k of theta."""
        out, at = [], 0
        for p in self.layout.p:
            r, c = lower_colmajor(p)
            T = np.zeros((p, p))
            T[r, c] = theta[at : at + len(r)]
            out.append(T)
            at += len(r)
        return out

    def Lambda(self, theta: np.ndarray) -> sp.csc_matrix:
        """Lambda_theta (q x q, block diagonal, lower triangular blocks)."""
        lam = self.pattern.copy()
        lam.data = np.asarray(theta, dtype=np.float64)[self.lind]
        return lam


@dataclass(frozen=True)
class PLSSolution:
    """Everything PLS gives at one theta (names as in the module docstring)."""

    theta: np.ndarray
    logdet_L: float
    logdet_RX: float
    pwrss: float
    beta: np.ndarray
    cu: np.ndarray
    RZX: np.ndarray
    RX: np.ndarray


@dataclass(frozen=True)
class Criterion:
    """The profiled deviance (ML) or REML criterion as a function of a PLS solution."""

    reml: bool
    n: int
    p: int
    sum_log_w: float

    @property
    def nu(self) -> int:
        return self.n - self.p if self.reml else self.n

    def __call__(self, sol: PLSSolution) -> float:
        nu = self.nu
        value = sol.logdet_L + nu * (1.0 + math.log(2.0 * math.pi * sol.pwrss / nu))
        if self.reml:
            value += sol.logdet_RX
        return value - self.sum_log_w

    def sigma2(self, sol: PLSSolution) -> float:
        return sol.pwrss / self.nu


class PLS:
    """The PLS system of one model: the factor's structure fixed once, values per theta."""

    def __init__(self, cp: CrossProducts, tmap: ThetaMap, ordering: str = "auto") -> None:
        self.tmap = tmap
        self._store(cp)
        generic = np.where(tmap.diagonal_mask(), 1.0, 0.5)
        self.factor = choose_factor(self.scaled(generic), cp.ZtZ, tmap, ordering)

    def set_crossproducts(self, cp: CrossProducts) -> None:
        """New cross-products with the same sparsity pattern (PIRLS reweights the rows);
        the factor's structure is kept."""
        self._store(cp)
        if isinstance(self.factor, MappedSchurFactor):
            self.factor.set_crossproducts(cp.ZtZ)

    def _store(self, cp: CrossProducts) -> None:
        self.cp = cp
        A = cp.ZtZ
        self._A = A
        if self.tmap.is_diagonal:
            self._cols = np.repeat(np.arange(A.shape[1]), np.diff(A.indptr))
        else:
            self._A_full = (A + A.T - sp.diags(A.diagonal())).tocsc()
        self._ZXY = np.column_stack([cp.ZtX, cp.ZtY])

    @property
    def ordering(self) -> str:
        return self.factor.ordering

    def scaled(self, theta: np.ndarray) -> sp.csc_matrix:
        """The lower triangle of Lambda' Z'WZ Lambda (the ``+ I`` is CHOLMOD's beta)."""
        lam = self.tmap.Lambda(theta)
        if self.tmap.is_diagonal:
            d = lam.data
            A = self._A
            return sp.csc_matrix(
                (A.data * d[A.indices] * d[self._cols], A.indices, A.indptr), shape=A.shape
            )
        return sp.tril(lam.T @ self._A_full @ lam, format="csc")

    def _refactor(self, theta: np.ndarray) -> None:
        """New values of the factor at theta (its structure is fixed)."""
        if isinstance(self.factor, MappedSchurFactor):
            lam = _trailing_block(self.tmap.Lambda(theta), self.factor.n1)
            self.factor.update_theta(float(theta[0]), lam, self.tmap.blocks(theta)[1:])
        else:
            self.factor.update(self.scaled(theta))

    def _lambda_t(self, theta: np.ndarray, M: np.ndarray) -> np.ndarray:
        lam = self.tmap.Lambda(theta)
        if self.tmap.is_diagonal:
            return lam.data[:, None] * M
        return np.asarray(lam.T @ M)

    def solve(self, theta: np.ndarray) -> PLSSolution:
        """Factor and solve the PLS system at ``theta``."""
        theta = np.asarray(theta, dtype=np.float64)
        self._refactor(theta)
        C = self.factor.half_solve(self._lambda_t(theta, self._ZXY))
        p = self.cp.XtX.shape[0]
        return solution(self.cp, theta.copy(), float(self.factor.logdet()), C[:, :p], C[:, p])

    @property
    def has_trace_sums(self) -> bool:
        """Whether ``trace_sums`` (and so the closed-form gradient) is offered."""
        return isinstance(self.factor, SchurFactor)

    def trace_sums(self, theta: np.ndarray) -> list[np.ndarray]:
        """SB_k (``SchurFactor.block_sums``); the factor must hold ``theta``."""
        assert isinstance(self.factor, SchurFactor)
        return self.factor.block_sums(self.tmap.layout)

    def F(self, sol: PLSSolution) -> np.ndarray:
        """F = M^-1 Lambda'Z'WX = P' L^-T R_ZX (the factor must hold ``sol.theta``)."""
        return self.factor.half_solve_t(sol.RZX)

    def modes(self, sol: PLSSolution) -> tuple[np.ndarray, np.ndarray]:
        """(u, b): spherical and original-scale conditional modes at ``sol``.

        The factor must hold ``sol.theta`` (the last ``solve``)."""
        v = sol.cu - sol.RZX @ sol.beta
        u = self.factor.half_solve_t(v)
        return u, np.asarray(self.tmap.Lambda(sol.theta) @ u)

    def nnz_L(self) -> int:
        """Non-zeros of the current factor L."""
        return self.factor.nnz_L()


def solution(
    cp: CrossProducts, theta: np.ndarray, logdet_L: float, RZX: np.ndarray, cu: np.ndarray
) -> PLSSolution:
    """The PLS solution from the random-effects part of the solve (``fixed_effects``)."""
    RX, beta, pwrss = fixed_effects(cp, RZX.T @ RZX, RZX.T @ cu, float(cu @ cu))
    return PLSSolution(
        theta=theta,
        logdet_L=logdet_L,
        logdet_RX=float(2.0 * np.sum(np.log(np.diag(RX)))),
        pwrss=pwrss,
        beta=beta,
        cu=cu,
        RZX=RZX,
        RX=RX,
    )


def fixed_effects(
    cp: CrossProducts, RtR: np.ndarray, Rtc: np.ndarray, ctc: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """(R_X, beta, pwrss) from the random-effects part of the solve, RtR = R_ZX'R_ZX,
    Rtc = R_ZX'c_u and ctc = |c_u|^2 (module docstring):  R_X'R_X = X'WX - RtR,
    c_beta = R_X^-T (X'Wy - Rtc), beta = R_X^-1 c_beta, pwrss = y'Wy - ctc - |c_beta|^2.
    Raises LinAlgError where R_X'R_X is not positive definite."""
    p = cp.XtX.shape[0]
    if not p:
        return np.zeros((0, 0)), np.zeros(0), max(cp.yty - ctc, 1e-300)
    RX = la.cholesky(cp.XtX - RtR, lower=False)
    cbeta = la.solve_triangular(RX, cp.XtY - Rtc, trans="T")
    beta = la.solve_triangular(RX, cbeta)
    return RX, beta, max(cp.yty - ctc - float(cbeta @ cbeta), 1e-300)


def choose_factor(M0: sp.csc_matrix, A: sp.csc_matrix, tmap: ThetaMap, ordering: str):
    """The factor ``plan_factor`` chooses, built (``FactorTooLarge`` where it cannot be)."""
    layout = tmap.layout
    n1 = layout.p[0] * layout.nlevels[0]
    mapped = None
    if _mapped_candidate(A, layout, n1, ordering):  # its map gives the density for free
        mapped = MappedSchurFactor(A, n1, trailing_terms(layout, n1))
    density = None if mapped is None else mapped.schur_density()
    kind, how = plan_factor(M0, A, tmap, ordering, density)
    if kind == "mapped":
        assert mapped is not None  # "mapped" is only planned for a candidate
        return mapped
    if kind == "schur":
        return SchurFactor(layout.p[0], n1, layout.q)
    try:
        return CholmodFactor(M0, how)
    except CholmodTooLargeError:
        raise _too_large(layout.q - n1) from None


def plan_factor(
    M0: sp.csc_matrix,
    A: sp.csc_matrix,
    tmap: ThetaMap,
    ordering: str,
    density: float | None = None,
) -> tuple[str, str]:
    """(kind, CHOLMOD ordering): "schur" when the complement of the first term is small
    enough to be dense and dense enough to fill in anyway (or ``ordering="schur"``),
    "mapped" (updated from theta directly) when besides the first term is scalar and its
    pair map is not too large; "cholmod" otherwise.  Raises ``FactorTooLarge`` when the
    trailing block would fill in beyond MAX_DENSE_BYTES.  ``density``: S's share of
    non-zeros where the caller has it (``MappedSchurFactor.schur_density``)."""
    layout = tmap.layout
    n1 = layout.p[0] * layout.nlevels[0]
    n2 = layout.q - n1
    if ordering not in ("auto", "schur"):
        return "cholmod", ordering
    if ordering == "schur":
        density = 1.0
    elif density is None:
        density = _schur_density(M0, n1)
    if n2 <= MAX_DENSE_SCHUR and density >= SCHUR_DENSE:
        return ("mapped" if _mapped_candidate(A, layout, n1, ordering) else "schur"), ""
    if density >= 0.01 and 4.0 * n2 * n2 > MAX_DENSE_BYTES:
        raise _too_large(n2)
    return "cholmod", "metis"


def _mapped_candidate(A: sp.csc_matrix, layout: TermLayout, n1: int, ordering: str) -> bool:
    """A scalar first term, a trailing block small enough to be dense and a pair map
    that stays small: ``MappedSchurFactor`` if S is also dense enough."""
    n2 = layout.q - n1
    small = 0 < n2 <= MAX_DENSE_SCHUR and ordering in ("auto", "schur")
    return small and layout.p[0] == 1 and MappedSchurFactor.fits(A, n1)


def exact_or_iterative(layout: TermLayout, ordering: str, exact, iterative):
    """``exact()`` unless ``ordering="iterative"`` or, with ``"auto"`` and a scalar first
    term, the exact factor is too large: then ``iterative()`` (the fit's rule, which the
    memory estimate follows)."""
    if ordering == "iterative":
        return iterative()
    try:
        return exact()
    except FactorTooLarge:
        if layout.p[0] != 1 or ordering != "auto":
            raise
        return iterative()


def _trailing_block(lam: sp.csc_matrix, n1: int) -> sp.csc_matrix:
    """Lambda's trailing block (rows and columns n1:), by slicing its arrays: Lambda is
    block diagonal, so columns n1: hold rows >= n1 only."""
    cut = lam.indptr[n1]
    n2 = lam.shape[0] - n1
    return sp.csc_matrix(
        (lam.data[cut:], lam.indices[cut:] - n1, lam.indptr[n1:] - cut), shape=(n2, n2)
    )


def _too_large(n2: int) -> FactorTooLarge:
    """Crossed factors fill the trailing block in: say how big it would be."""
    return FactorTooLarge(
        f"the exact fit needs the Cholesky factor of a {n2:,} x {n2:,} block that fills "
        f"in (~{4.0 * n2 * n2 / 2**30:.0f} GiB dense, ~{n2**3 / 3:.0e} flops per optimizer "
        "step): too large for the exact (Cholesky) path on this machine; the iterative "
        "path (--ordering iterative) needs a scalar first term such as (1 | patient)",
        "formula",
    )


def _schur_density(M0: sp.csc_matrix, n1: int) -> float:
    """Share of non-zeros in the pattern of M22 + B B' (before any further fill); 1 for
    a small block (``MappedSchurFactor.schur_density`` reads it off its map)."""
    n2 = M0.shape[0] - n1
    if n2 <= SMALL_SCHUR:
        return 1.0
    B = (M0[n1:, :n1] != 0).astype(np.float64)
    pattern = (B @ B.T) + (M0[n1:, n1:] != 0) + (M0[n1:, n1:] != 0).T
    return pattern.nnz / float(n2) ** 2
