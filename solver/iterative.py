"""PLS without a Cholesky factor of the crossed block: PCG solves and a stochastic
Lanczos log-determinant on the Schur complement (for designs whose exact factor fills in
beyond memory, e.g. patients x physicians x hospitals at 10M rows).

The first term (scalar, the most levels) is eliminated exactly, as in ``SchurFactor``:

    M = Lambda'Z'WZ Lambda + I = [ D   B' ]    D = theta_1^2 diag(a) + I   (a = diag A11)
                                 [ B   M22]    B = Lambda_2' A21 theta_1
    S = M22 - B D^-1 B' = I + Lambda_2' (A22 - A21 diag(w) A12) Lambda_2,   w = theta_1^2 / d

S is applied matrix-free: A22 and the Gram product A21 diag(w) A12 over chunks of the
first term's levels on all cores (``gram.ChunkedGram``).  Solves:

    M x = r:   x2 = S^-1 (r2 - B D^-1 r1)  by preconditioned CG,   x1 = D^-1 (r1 - B' x2)

Preconditioner P: the diagonal blocks of S over clusters of the trailing levels (each
level of the coarsest trailing term with the levels that meet it most, e.g. a hospital
with its physicians), factored P_c = C_c C_c' in batches of equal size.  Then

    log|M| = sum log d + log|P| + tr log(A~),     A~ = C^-1 S C^-T = I + E

E has zero diagonal blocks, so tr(A~ - I) = 0 exactly, and the trace is estimated as

    tr log(A~) = tr f(A~),  f(x) = log x - (x - 1)     (f = O(E^2): a control variate)
              ~ (1/m) sum_i |z_i|^2 e_1' f(T_i) e_1    (Lanczos on A~ from Rademacher z_i)

with m fixed probes drawn once per model (common random numbers: the estimate is a
smooth, deterministic function of theta, which a derivative-free optimizer can use);
its Monte Carlo standard error is sd_i / sqrt(m), reported with the fit.  T_i comes from
CG on A~ x_i = z_i (CG's coefficients are Lanczos's), so the same steps give the solves
A~^-1 z_i that the gradient's traces need.  Those products over the first term run in
float32 (their error ~1e-7 |E z|, E = A~ - I; CG to a relative residual of 1e-6, where
the quadrature has settled to ~1e-12): at 1M EHR rows log|M| moved by < 1e-6 against
float64 products and 1e-12 residuals, its standard error 5e-4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .crossprod import TermLayout
from .gram import ChunkedGram

PROBES = 64  # Rademacher probe vectors for the log-determinant
PROBE_DTYPE = np.float32  # of the products over the first term in the probes' CG
PROBE_TOL = 1e-6  # relative residual of the probes' CG (float32 products: ~1e-7 at best)
PROBE_MAXIT = 60  # CG steps at most on the probes (A~ is well conditioned: ~10 suffice)
CG_TOL = 1e-12  # relative residual of the PCG solves
CG_MAXIT = 1000
# block Krylov deflation (starting vectors, powers of A~), tried in this order at the
# first theta (``SchurOperator.logdet``): the first whose Monte Carlo standard error is
# within SE_TARGET is kept for the fit; the search stops early when a wider one cuts the
# standard error by less than DEFLATION_GAIN (relative) against the one before it
DEFLATIONS = ((8, 3), (16, 5), (32, 5), (32, 8), (64, 8))
SE_TARGET = 3e-4  # of log|M|: the objective within 1e-3 at ~3 standard errors
DEFLATION_GAIN = 0.1
MAX_CLUSTER = 400  # largest preconditioner block
SEED = 20240601


@dataclass(frozen=True)
class Clusters:
    """A partition of the trailing columns into preconditioner blocks, grouped by size:
    ``batches[b]`` is an (n_b, size_b) array of column indices (0-based in S)."""

    batches: tuple[np.ndarray, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(b.shape[1]) for b in self.batches)


def trailing_clusters(A22: sp.csr_matrix, layout: TermLayout, n1: int) -> Clusters:
    """Each level of the coarsest trailing term seeds a cluster; every level of the other
    trailing terms joins the seed it shares the most weight with in A22 (a physician the
    hospital where it works); levels that meet no seed stay alone."""
    terms = [
        (off - n1, p, nl)
        for off, p, nl in zip(layout.offsets[1:], layout.p[1:], layout.nlevels[1:])
    ]
    n2 = A22.shape[0]
    seed_k = int(np.argmin([nl for _, _, nl in terms]))
    s_off, s_p, s_nl = terms[seed_k]
    label = np.full(n2, -1, dtype=np.int64)
    label[s_off : s_off + s_p * s_nl] = np.repeat(np.arange(s_nl), s_p)
    to_seed = A22[:, s_off : s_off + s_p * s_nl].tocsr()
    next_label = s_nl
    for k, (off, p, nl) in enumerate(terms):
        if k == seed_k:
            continue
        block = abs(to_seed[off : off + p * nl])  # (p nl) x (p s_nl)
        per_level = _sum_rows(block, p, nl) @ _sum_cols(s_p, s_nl)  # nl x s_nl
        best = np.asarray(per_level.argmax(axis=1)).ravel()
        linked = np.asarray(per_level.max(axis=1).todense()).ravel() > 0
        lab = np.where(linked, best, next_label + np.arange(nl))
        next_label += nl
        label[off : off + p * nl] = np.repeat(lab, p)
    return _batched(_split_large(label, MAX_CLUSTER))


def _sum_rows(block: sp.csr_matrix, p: int, nl: int) -> sp.csr_matrix:
    agg = sp.csr_matrix((np.ones(p * nl), (np.repeat(np.arange(nl), p), np.arange(p * nl))))
    return agg @ block


def _sum_cols(p: int, nl: int) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones(p * nl), (np.arange(p * nl), np.repeat(np.arange(nl), p))))


def _split_large(label: np.ndarray, cap: int) -> np.ndarray:
    """Cut clusters above ``cap`` columns into consecutive pieces (levels stay whole:
    a level's p columns are adjacent and cap is far above p)."""
    order = np.argsort(label, kind="stable")
    sorted_label = label[order]
    start = np.r_[0, np.flatnonzero(np.diff(sorted_label)) + 1]
    rank = np.arange(len(label)) - np.repeat(start, np.diff(np.r_[start, len(label)]))
    piece = np.empty_like(label)
    piece[order] = sorted_label * (len(label) + 1) + rank // cap
    return np.unique(piece, return_inverse=True)[1]


def _batched(label: np.ndarray) -> Clusters:
    order = np.argsort(label, kind="stable")
    counts = np.bincount(label)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    batches = []
    for size in np.unique(counts):
        which = np.flatnonzero(counts == size)
        cols = order[starts[which][:, None] + np.arange(size)[None, :]]
        batches.append(cols)
    return Clusters(tuple(batches))


@dataclass(frozen=True)
class _ApproxInverse:
    """What ``level_blocks`` needs at one theta (see there)."""

    Hm: np.ndarray  # H^-1 - I on the deflation space
    G: np.ndarray  # C^-T W
    LG: np.ndarray  # Lambda_2 G (n2 x r): Q = A12 Lambda_2 G, a chunk of levels at a time
    quad_P: np.ndarray  # a_s' Lambda_2 P^-1 Lambda_2' a_s per level of the first term


@dataclass(frozen=True)
class LogDet:
    """log|M| by stochastic Lanczos quadrature, with its Monte Carlo standard error."""

    value: float
    std_error: float
    probes: int
    lanczos_steps: int


class SchurOperator:
    """S = I + Lambda_2' (A22 - A21 diag(w) A12) Lambda_2 at one theta, with its block
    preconditioner, PCG solves and the stochastic log-determinant (module docstring)."""

    def __init__(self, A: sp.csc_matrix, layout: TermLayout, probes: int = PROBES) -> None:
        n1 = layout.nlevels[0] * layout.p[0]
        if layout.p[0] != 1:
            raise ValueError("the iterative path eliminates a scalar first term")
        self.n1, self.n2 = n1, A.shape[0] - n1
        A = A.tocsc()
        A.sort_indices()
        self.a = np.asarray(A.diagonal()[:n1])
        lower = sp.tril(A, format="csc")
        self.A21 = lower[n1:, :n1].tocsr()
        self.A12 = self.A21.T.tocsr()
        L22 = lower[n1:, n1:]
        self.A22 = (L22 + sp.tril(L22, -1).T).tocsr()
        self.clusters = trailing_clusters(self.A22, layout, n1)
        near = np.concatenate([b.ravel() for b in self.clusters.batches])  # cluster by cluster
        self.gram = ChunkedGram(self.A12, cols=near)
        self.gram_probes = self.gram.astype(PROBE_DTYPE)
        self._within = _within_pairs(self.A21, self.A22, self.clusters)
        rng = np.random.default_rng(SEED)
        self.Z = rng.choice(np.array([-1.0, 1.0]), size=(self.n2, probes))
        self.Y0 = rng.standard_normal((self.n2, max(w for w, _ in DEFLATIONS)))
        self.deflation: tuple[int, int] | None = None  # chosen at the first logdet
        self.W = np.zeros((self.n2, 0))  # its space (orthonormal columns), set by logdet
        self._approx: _ApproxInverse | None = None  # per theta, for level_blocks
        self._Pinv: list[np.ndarray] | None = None  # per theta
        self._probes: np.ndarray | None = None  # [W, Q Z] of the chosen deflation
        self._inverse_probes: np.ndarray | None = None  # A~^-1 [W, Q Z], per theta
        self.cg_iterations = 0

    @property
    def deflation_width(self) -> int:
        width, rounds = self.deflation or DEFLATIONS[0]
        return min(self.n2, width * (rounds + 1))

    @property
    def nblocks(self) -> int:
        return int(sum(b.shape[0] for b in self.clusters.batches))

    def blas_limits(self) -> dict[str, int] | None:
        """One BLAS thread: the products run on all cores (``ChunkedGram``) and the dense
        work is small batches (the cluster blocks) and tall QRs, where OpenBLAS's second
        thread spinning beside a busy core made them 5-15x slower (EHR 1M rows)."""
        return {"libscipy_openblas": 1}

    def level_blocks(self, off: int, p: int, levels: np.ndarray) -> np.ndarray:
        """Approximate diagonal blocks of M^-1 (for conditional variances): with the
        deflation space W of ``logdet`` and H = W'A~W,

            A~^-1 ~ I + W (H^-1 - I) W'       (exact on W, A~ taken as I beyond it)
            S^-1  ~ P^-1 + G (H^-1 - I) G',   G = C^-T W
            (M^-1)_ss = 1/d_s + v_s' S^-1 v_s,   v_s = theta_1 Lambda_2' A21 e_s / d_s

        with v_s' P^-1 v_s from the cluster pair map (P is block diagonal).  The remainder
        (A~^-1 - the above) is neglected: the fit says the SDs are approximate."""
        ap = self._approx_inverse()
        if off < self.n1:  # the first term (scalar)
            scale = self.theta1 / self.d[levels]
            Q = np.asarray(self.A12[levels] @ ap.LG)  # (levels, r)
            corr = np.einsum("lr,lr->l", Q @ ap.Hm, Q)
            value = 1.0 / self.d[levels] + scale**2 * (ap.quad_P[levels] + corr)
            return value[:, None, None]
        idx = off - self.n1 + levels[:, None] * p + np.arange(p)[None, :]
        out = np.empty((len(levels), p, p))
        for a in range(p):
            for c in range(p):
                out[:, a, c] = self._p_inverse_entries(idx[:, a], idx[:, c])
        Gl = ap.G[idx]  # (levels, p, r)
        return out + np.matmul(Gl @ ap.Hm, np.transpose(Gl, (0, 2, 1)))

    def _approx_inverse(self) -> _ApproxInverse:
        if self._approx is None:
            W = self.W
            H = W.T @ self._tilde(W)
            lam, U = np.linalg.eigh(0.5 * (H + H.T))
            Hm = (U / lam) @ U.T - np.eye(len(lam))
            G = self._blocks(W, True)  # C^-T W
            LG = np.asarray(self.lam2 @ G)
            quad = np.zeros(self.n1)
            blocks = zip(self.clusters.batches, self._p_inverse(), self._lam_blocks)
            for (cols, Pi, lam_b), Gt in zip(blocks, self._within.maps):
                LPL = np.matmul(np.transpose(lam_b, (0, 2, 1)), np.matmul(Pi, lam_b))
                twice = 2.0 * LPL
                idx = np.arange(cols.shape[1])
                twice[:, idx, idx] = LPL[:, idx, idx]  # off-diagonal pairs are stored once
                quad += Gt @ twice.reshape(-1)
            self._approx = _ApproxInverse(Hm, G, LG, quad)
        return self._approx

    def _p_inverse(self) -> list[np.ndarray]:
        """P_c^-1 = C_c^-T C_c^-1 per batch, once per theta."""
        if self._Pinv is None:
            self._Pinv = [np.matmul(np.transpose(Ci, (0, 2, 1)), Ci) for Ci in self.Cinv]
        return self._Pinv

    def _p_inverse_entries(self, j: np.ndarray, k: np.ndarray) -> np.ndarray:
        """(P^-1)_{j_i, k_i} for trailing columns j_i, k_i of one cluster each."""
        w, out = self._within, np.empty(len(j))
        for b, Pi in enumerate(self._p_inverse()):
            m = w.batch_of[j] == b
            out[m] = Pi[w.slot[j[m]], w.pos_in[j[m]], w.pos_in[k[m]]]
        return out

    # -- per theta -------------------------------------------------------------------
    def update(self, theta1: float, lam2: sp.csc_matrix) -> None:
        t2 = theta1 * theta1
        self.theta1, self.d = theta1, t2 * self.a + 1.0
        self.w = t2 / self.d
        self.lam2 = lam2.tocsr()
        self.lam2t = lam2.T.tocsr()
        self.Cinv = self._block_factors()
        self._approx = None
        self._Pinv = None
        self._inverse_probes = None

    def _block_factors(self) -> list[np.ndarray]:
        """C_c^-1 for every cluster block P_c = S[c, c] = C_c C_c'; log|P|, the C_c and
        the blocks of Lambda_2 kept."""
        K = self._within.values(self.w)
        out: list[np.ndarray] = []
        factors: list[np.ndarray] = []
        self._lam_blocks = [_dense_blocks(self.lam2, cols) for cols in self.clusters.batches]
        logdet = 0.0
        for cols, Kb, lam in zip(self.clusters.batches, K, self._lam_blocks):
            P = np.matmul(np.transpose(lam, (0, 2, 1)), np.matmul(Kb, lam))
            P += np.eye(cols.shape[1])[None]
            C = np.linalg.cholesky(P)
            logdet += 2.0 * float(np.sum(np.log(np.diagonal(C, axis1=1, axis2=2))))
            eye = np.broadcast_to(np.eye(cols.shape[1]), C.shape)
            out.append(np.linalg.solve(C, eye))
            factors.append(C)
        self.logdet_P = logdet
        self.C = factors
        return out

    def apply(self, V: np.ndarray, gram: ChunkedGram | None = None) -> np.ndarray:
        """S V (the products over the first term by ``gram``, the float64 one by default)."""
        LV = self.lam2 @ V
        inner = self.A22 @ LV - (gram or self.gram)(self.w, LV)
        return V + self.lam2t @ inner

    def _blocks(self, V: np.ndarray, transpose: bool, inverse: bool = True) -> np.ndarray:
        """C^-1 V (or C^-T V; C V or C' V with ``inverse=False``), block by block."""
        out = np.empty_like(V)
        for cols, Ci, C in zip(self.clusters.batches, self.Cinv, self.C):
            Vb = V[cols]  # (n_b, size, m)
            M = Ci if inverse else C
            op = np.transpose(M, (0, 2, 1)) if transpose else M
            out[cols] = np.matmul(op, Vb)
        return out

    def precondition(self, R: np.ndarray) -> np.ndarray:
        """P^-1 R = C^-T C^-1 R."""
        return self._blocks(self._blocks(R, False), True)

    def solve(self, R: np.ndarray) -> np.ndarray:
        """S^-1 R by preconditioned conjugate gradients, all columns at once."""
        X = np.zeros_like(R)
        Rk = R.copy()
        Zk = self.precondition(Rk)
        Pk = Zk.copy()
        rz = np.sum(Rk * Zk, axis=0)
        norm0 = np.maximum(np.linalg.norm(R, axis=0), 1e-300)
        for it in range(1, CG_MAXIT + 1):
            self.cg_iterations = it
            SP = self.apply(Pk)
            alpha = rz / np.maximum(np.sum(Pk * SP, axis=0), 1e-300)
            X += Pk * alpha
            Rk -= SP * alpha
            if np.all(np.linalg.norm(Rk, axis=0) <= CG_TOL * norm0):
                break
            Zk = self.precondition(Rk)
            rz_new = np.sum(Rk * Zk, axis=0)
            Pk = Zk + Pk * (rz_new / np.maximum(rz, 1e-300))
            rz = rz_new
        return X

    def logdet(self) -> LogDet:
        """log|M| = sum log d + log|P| + tr f(A~): the part on a deflation space W
        (block Krylov from fixed vectors: it catches the few outlying eigenvalues of A~
        that carry most of the variance) by Lanczos quadrature from W's columns, the rest
        by Hutchinson on (I - W W') z (unbiased whatever W is).  The deflation is chosen
        once, at the first theta (``_choose_deflation``), then kept: the estimate stays a
        deterministic function of theta."""
        if self.deflation is None:
            return self._choose_deflation()
        return self._logdet(self.deflation)

    def _choose_deflation(self) -> LogDet:
        """Try ``DEFLATIONS`` in order: the first whose standard error is within
        SE_TARGET is kept; otherwise the one with the least variance per product column,
        se^2 (width + probes), among those tried, where the trial stops at the first that
        cuts the standard error by less than DEFLATION_GAIN (relative).  Measured standard
        errors (x 1e-3) at the five widths: InstEval 228, 11, 1.6, 0.42, 0.08 (the widest
        kept); EHR 1M rows 1.41, 1.22, 0.97, 0.82, 0.47 (the widest kept: falls of 14% or
        more); EHR 10M 4.80, 4.75, 4.66, 4.51, 4.20 (the second gains 1%: the search stops
        there and keeps the first, ~45 s instead of ~4 minutes for all five).  The tried
        deflations' states are kept for the best so far, so it is not computed again."""
        best: tuple[float, tuple[int, int], LogDet, tuple] | None = None
        previous_se = math.inf
        for choice in DEFLATIONS:
            ld = self._logdet(choice)
            if ld.std_error <= SE_TARGET or self.deflation_width >= self.n2:
                return ld
            cost = ld.std_error**2 * (self.deflation_width + ld.probes)
            if best is None or cost < best[0]:
                best = (cost, choice, ld, (self.W, self._probes, self._inverse_probes))
            if ld.std_error > (1.0 - DEFLATION_GAIN) * previous_se:
                break
            previous_se = ld.std_error
        assert best is not None
        _, self.deflation, ld, (self.W, self._probes, self._inverse_probes) = best
        return ld

    def _logdet(self, deflation: tuple[int, int]) -> LogDet:
        self.deflation = deflation
        W = self._deflation_space(*deflation)
        self.W = W
        Zq = self.Z - W @ (W.T @ self.Z)
        probes = self._probes = np.column_stack([W, Zq])
        values, self._inverse_probes, steps = _cg_quadrature(self._tilde_probes, probes)
        on_w, per_probe = values[: W.shape[1]], values[W.shape[1] :]
        m = per_probe.shape[0]
        trace = float(on_w.sum() + per_probe.mean())
        se = float(per_probe.std(ddof=1) / np.sqrt(m)) if m > 1 else float("inf")
        value = float(np.sum(np.log(self.d))) + self.logdet_P + trace
        return LogDet(value, se, m, steps)

    def _deflation_space(self, width: int, rounds: int) -> np.ndarray:
        """Orthonormal basis of [Y, A~Y, ..., A~^r Y] for fixed random Y (n2 x width)."""
        Y = self.Y0[:, : min(width, self.n2)]
        blocks = [Y]
        for _ in range(rounds):
            Q, _ = np.linalg.qr(blocks[-1])
            blocks.append(self._tilde(Q))
        W, _ = np.linalg.qr(np.column_stack(blocks))
        return W[:, : self.deflation_width]

    def trace_sums(self, layout: TermLayout) -> list[np.ndarray]:
        """SB_k = sum over the levels of term k of the diagonal blocks of M^-1 (what the
        closed-form gradient needs), estimated as traces tr(S^-1 X) = tr(A~^-1 Y),
        Y = C^-1 X C^-T, split on the deflation space W of ``logdet`` (same theta):

            tr(A~^-1 Y) = sum_i (A~^-1 w_i)'(Y w_i) + mean_j (A~^-1 Q z_j)'(Y z_j),  Q = I - W W'

        (exact on W, Hutchinson on the rest, the same fixed probes), with

            SB_1 = sum 1/d + tr(S^-1 V V'),  V = Lambda_2' A21 theta_1 D^-1   (first term)
            SB_k[a, b] = sum_l (S^-1)_{(l,a),(l,b)}                           (the others)
        """
        if self._inverse_probes is None:
            self.logdet()
        assert self._inverse_probes is not None and self._probes is not None
        W, Z = self.W, self.Z
        diff = self._inverse_probes - self._probes  # (A~^-1 - I) [W, Q Z]: small, A~ ~ I
        r = W.shape[1]
        ct = self._blocks(np.column_stack([W, Z]), True)  # C^-T [W, Z]

        def trace(XCt: np.ndarray, exact: float) -> float:
            Y = self._blocks(XCt, False)  # C^-1 X C^-T [W, Z]
            prods = np.sum(diff * Y, axis=0)
            return exact + float(prods[:r].sum() + prods[r:].mean())

        scale = self.theta1 / self.d
        XCt = self.lam2t @ self.gram_probes(scale * scale, self.lam2 @ ct)
        exact = self._trace_P_inv_VVt(scale * scale)
        sums = [np.array([[float(np.sum(1.0 / self.d)) + trace(XCt, exact)]])]
        for off, p, nl in zip(layout.offsets[1:], layout.p[1:], layout.nlevels[1:]):
            idx = off - self.n1 + np.arange(nl)[:, None] * p + np.arange(p)[None, :]
            SB = np.zeros((p, p))
            for a in range(p):
                for b in range(p):
                    XCt = np.zeros_like(ct)
                    XCt[idx[:, b]] = ct[idx[:, a]]  # E^{ba} t: row (l, b) takes t_(l, a)
                    # tr(P^-1 E^{ba}) = sum_l (P^-1)_{(l,a),(l,b)}
                    exact = float(self._p_inverse_entries(idx[:, a], idx[:, b]).sum())
                    SB[a, b] = trace(XCt, exact)
            sums.append(0.5 * (SB + SB.T))
        return sums

    def _trace_P_inv_VVt(self, w2: np.ndarray) -> float:
        """tr(P^-1 V V') from the cluster blocks of V V' = Lambda_2' A21 diag(w2) A12 Lambda_2."""
        total = 0.0
        for P, H, lam in zip(self._p_inverse(), self._within.products(w2), self._lam_blocks):
            X = np.matmul(np.transpose(lam, (0, 2, 1)), np.matmul(H, lam))
            total += float(np.sum(P * X))
        return total

    def _tilde(self, V: np.ndarray, gram: ChunkedGram | None = None) -> np.ndarray:
        """A~ V = C^-1 S C^-T V (``gram`` as in ``apply``)."""
        return self._blocks(self.apply(self._blocks(V, True), gram), False)

    def _tilde_probes(self, V: np.ndarray) -> np.ndarray:
        """A~ V with the products over the first term in PROBE_DTYPE."""
        return self._tilde(V, self.gram_probes)

    # -- the full system M ---------------------------------------------------------
    def solve_M(self, R: np.ndarray) -> np.ndarray:
        """M^-1 R through the Schur complement (R: q x k)."""
        R1, R2 = R[: self.n1], R[self.n1 :]
        BDr = self.lam2t @ (self.A21 @ (R1 * (self.theta1 / self.d)[:, None]))
        X2 = self.solve(R2 - BDr)
        BtX2 = self.theta1 * (self.A12 @ (self.lam2 @ X2))
        X1 = (R1 - BtX2) / self.d[:, None]
        return np.vstack([X1, X2])


def _cg_quadrature(op, B: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """CG on A~ X = B, all columns at once, until every relative residual is within
    PROBE_TOL, and from its coefficients (a_j, b_j) each column's Lanczos tridiagonal T,

        T_jj = 1/a_j + b_{j-1}/a_{j-1},   T_j,j+1 = sqrt(b_j)/a_j,

    for |b|^2 e_1' f(T) e_1, f(x) = log x - (x - 1).  Returns those values, X = A~^-1 B
    and the steps.  The quadrature's error falls like CG's A-norm error, about the
    residual squared, so it has settled far below PROBE_TOL when CG stops."""
    cg = _CGLanczos(B)
    steps = 0
    while cg.active.any() and steps < PROBE_MAXIT:
        cg.step(op(cg.P))
        steps += 1
    return cg.norms2 * _quadrature(np.array(cg.diag), np.array(cg.off)), cg.X, steps


class _CGLanczos:
    """CG's state per column and the tridiagonals built so far.  A converged column
    stops moving and its T is continued by decoupled 1s (f(1) = 0, no weight on e_1)."""

    def __init__(self, B: np.ndarray) -> None:
        self.norms2 = np.sum(B * B, axis=0)
        self.X, self.R, self.P = np.zeros_like(B), B.copy(), B.copy()
        self.rr, self.ratio = self.norms2.copy(), np.zeros(B.shape[1])
        self.active = self.norms2 > 0
        self.diag: list[np.ndarray] = []
        self.off: list[np.ndarray] = []

    def step(self, AP: np.ndarray) -> None:
        act = self.active
        alpha = np.where(act, self.rr / np.where(act, np.sum(self.P * AP, axis=0), 1.0), 0.0)
        inv_alpha = np.where(act, 1.0 / np.where(act, alpha, 1.0), 0.0)
        self.X += self.P * alpha
        self.R -= AP * alpha
        self.diag.append(np.where(act, inv_alpha + self.ratio, 1.0))
        rr = np.sum(self.R * self.R, axis=0)
        beta = np.where(act, rr / np.where(act, self.rr, 1.0), 0.0)
        act &= rr > PROBE_TOL**2 * self.norms2
        if act.any():  # T grows by one more row and column
            self.off.append(np.where(act, np.sqrt(beta) * inv_alpha, 0.0))
        self.ratio = np.where(act, beta * inv_alpha, 0.0)
        self.P = self.R + self.P * beta
        self.rr = rr


def _quadrature(alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """e_1' f(T) e_1 for each probe's tridiagonal T (alphas: steps x m)."""
    k, m = alphas.shape
    T = np.zeros((m, k, k))
    idx = np.arange(k)
    T[:, idx, idx] = alphas.T
    if k > 1:
        T[:, idx[:-1], idx[1:]] = betas[: k - 1].T
        T[:, idx[1:], idx[:-1]] = betas[: k - 1].T
    lam, U = np.linalg.eigh(T)
    f = np.log(lam) - (lam - 1.0)
    return np.sum(U[:, 0, :] ** 2 * f, axis=1)


def _dense_blocks(mat: sp.csr_matrix, cols: np.ndarray) -> np.ndarray:
    """mat[c, c] as dense (n_b, size, size) blocks for every cluster c of a batch."""
    nb, size = cols.shape
    out = np.zeros((nb, size, size))
    sub = mat[cols.ravel()][:, cols.ravel()].tocoo()  # small: within-batch pairs
    same = (sub.row // size) == (sub.col // size)
    out[sub.row[same] // size, sub.row[same] % size, sub.col[same] % size] = sub.data[same]
    return out


class _WithinPairs:
    """K restricted to the cluster blocks, K = A22 - A21 diag(w) A12, as a fixed linear
    map of w: for each batch, Gt_b (levels x entries of the packed blocks; G_b = Gt_b'
    maps w to the blocks' lower triangles) and the constant A22 part; values(w) gives
    the packed (n_b, size, size) blocks."""

    def __init__(self, base: list[np.ndarray], maps: list[sp.csr_matrix], where) -> None:
        self.base, self.maps = base, maps
        self.batch_of, self.slot, self.pos_in = where  # each trailing column's place

    def values(self, w: np.ndarray) -> list[np.ndarray]:
        return [b - c for b, c in zip(self.base, self.products(w))]

    def products(self, w: np.ndarray) -> list[np.ndarray]:
        """The cluster blocks of A21 diag(w) A12."""
        out = []
        for b, Gt in zip(self.base, self.maps):
            low = (Gt.T @ w).reshape(b.shape)  # lower triangles (diagonal included)
            diag = np.einsum("cii->ci", low)
            full = low + np.transpose(low, (0, 2, 1))
            idx = np.arange(b.shape[1])
            full[:, idx, idx] -= diag
            out.append(full)
        return out


def _within_pairs(A21: sp.csr_matrix, A22: sp.csr_matrix, clusters: Clusters) -> _WithinPairs:
    """The map from w to the cluster blocks of A21 diag(w) A12 (lower triangles), and
    the blocks of A22.  Pairs are formed a chunk of levels at a time (sum_s k_s^2 of them
    in all, k_s the trailing entries of level s; most fall outside the blocks), at most
    PAIR_CHUNK pairs per chunk, and come out ordered by level: each batch's map is
    assembled as Gt (one CSR row per level) from the chunks' pieces, no sort and no COO
    copy (EHR 10M rows: the setup's peak was 7.8 GB with a COO map of all pairs at once)."""
    n2, n1 = A21.shape
    batch_of = np.empty(n2, dtype=np.int64)
    slot = np.empty(n2, dtype=np.int64)  # which block of its batch the column is in
    pos_in = np.empty(n2, dtype=np.int64)  # its position within that block
    for b, cols in enumerate(clusters.batches):
        batch_of[cols.ravel()] = b
        slot[cols.ravel()] = np.repeat(np.arange(cols.shape[0]), cols.shape[1])
        pos_in[cols.ravel()] = np.tile(np.arange(cols.shape[1]), cols.shape[0])
    where = (batch_of, slot, pos_in)
    A12 = A21.tocsc()  # column s: the trailing entries of level s (rows of A21)
    pieces: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in clusters.batches]
    for lo, hi in _pair_chunks(np.diff(A12.indptr), PAIR_CHUNK):
        r1, r2, lev, vals = _pairs_in_blocks(A12, lo, hi, where)
        for b, cols in enumerate(clusters.batches):
            size, sel = cols.shape[1], batch_of[r1] == b
            flat = (slot[r1[sel]] * size + pos_in[r1[sel]]) * size + pos_in[r2[sel]]
            counts = np.bincount(lev[sel] - lo, minlength=hi - lo)
            pieces[b].append((counts, flat.astype(np.int32), vals[sel]))
    A22c = A22.tocoo()
    keep = (batch_of[A22c.row] == batch_of[A22c.col]) & (slot[A22c.row] == slot[A22c.col])
    base, maps = [], []
    for b, cols in enumerate(clusters.batches):
        nb, size = cols.shape
        maps.append(_stacked_rows(pieces[b], (n1, nb * size * size)))
        blk = np.zeros((nb, size, size))
        sa = keep & (batch_of[A22c.row] == b)
        rr, cc = A22c.row[sa], A22c.col[sa]
        blk[slot[rr], pos_in[rr], pos_in[cc]] = A22c.data[sa]
        base.append(blk)
    return _WithinPairs(base, maps, where)


PAIR_CHUNK = 4_000_000  # entry pairs per chunk of pair generation (~0.3 GB of temporaries)


def _pair_chunks(counts: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive ranges of levels with at most ``budget`` entry pairs (k_s^2) each, or
    one level where that alone is more."""
    cum = np.cumsum(counts.astype(np.int64) ** 2)
    cuts, lo = [], 0
    while lo < len(counts):
        base = cum[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(cum, base + budget, side="right")))
        cuts.append((lo, hi))
        lo = hi
    return cuts


def _stacked_rows(pieces: list, shape: tuple[int, int]) -> sp.csr_matrix:
    """CSR from consecutive row ranges given as (entries per row, column indices, values),
    filled in place and each piece dropped once copied (no second copy of all of them)."""
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.concatenate([c for c, _, _ in pieces]), out=indptr[1:])
    nnz = int(indptr[-1])
    index_type = np.int32 if max(nnz, shape[1]) < 2**31 else np.int64
    indices, data = np.empty(nnz, dtype=index_type), np.empty(nnz)
    at = 0
    while pieces:
        _, idx, vals = pieces.pop(0)
        indices[at : at + len(idx)], data[at : at + len(idx)] = idx, vals
        at += len(idx)
    return sp.csr_matrix((data, indices, indptr.astype(index_type)), shape=shape)


def _pairs_in_blocks(A12: sp.csc_matrix, lo: int, hi: int, where):
    """Entry pairs (j, k), pos(j) >= pos(k), of the levels lo..hi that share a block."""
    batch_of, slot, pos_in = where
    ptr = A12.indptr
    counts = np.diff(ptr[lo : hi + 1])
    entries = np.arange(ptr[lo], ptr[hi])
    reps = np.repeat(counts, counts)  # each entry pairs with every entry of its level
    i1 = np.repeat(entries, reps)
    first = np.repeat(np.repeat(ptr[lo:hi], counts), reps)
    within = np.arange(len(i1)) - np.repeat(np.cumsum(reps) - reps, reps)
    i2 = first + within
    r1, r2 = A12.indices[i1], A12.indices[i2]
    same = (batch_of[r1] == batch_of[r2]) & (slot[r1] == slot[r2])
    same &= pos_in[r1] >= pos_in[r2]
    lev = np.repeat(np.repeat(np.arange(lo, hi), counts), reps)
    return r1[same], r2[same], lev[same], A12.data[i1[same]] * A12.data[i2[same]]
