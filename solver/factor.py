"""Cholesky factors of M = Lambda'Z'WZ Lambda + I: two strategies behind one interface.

Both give  L L' = P M P'  and the operations PLS needs:

    logdet()            log|M| = log|L|^2
    half_solve(R)       L^-1 P R         (so |half_solve(r)|^2 = r' M^-1 r)
    half_solve_t(V)     P' L^-T V
    level_blocks(...)   diagonal p x p blocks of M^-1 for some levels of a term

``CholmodFactor``: CHOLMOD, symbolic analysis once (fill-reducing ordering), numeric
refactorization per theta.  General; used when the trailing block is large or sparse.

``SchurFactor``: the first term's block M11 = D is block diagonal (each row has one
level of that term), so with B = M21 and the Schur complement S = M22 - B D^-1 B',

    L = [ L_D          0   ]      L_D = chol(D) per level,   L_S = chol(S) (dense LAPACK)
        [ B L_D^-T    L_S  ]      log|M| = sum_l log|D_l| + log|S|

and S^-1 (LAPACK potri), the trailing block of M^-1, is what the closed-form
gradient needs.  Used when S (n2 = q - q_1 columns) is small enough to be dense.

``MappedSchurFactor``: the same when the first term is scalar, with S formed from theta
directly by a precomputed linear map (no sparse product per theta; see its docstring).
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp
from scipy.linalg import blas, lapack
from sksparse.cholmod import CholmodNotPositiveDefiniteError, analyze
from threadpoolctl import ThreadpoolController

from .crossprod import TermLayout

MAX_DENSE_SCHUR = 6000
SMALL_SCHUR = 1000  # a trailing block this small is taken as dense without looking
TRACE_CHUNK = 4096  # levels of the first term per block of X (B D^-1)
# below, one thread: two spinning BLAS threads on a busy 2-core machine cost 4-10x
DENSE_THREADS_FROM = 1000
SINGLE_FROM = 1000  # n2 from which the gradient's S^-1 may be single precision
SINGLE_RESIDUAL = 1e-4  # EHR 1M: 1e-5 to 1.6e-5 far from the optimum, 2.7e-6 near it


def limited_blas(factor) -> contextlib.AbstractContextManager:
    """The factor's BLAS thread limits (``blas_limits``) for the duration of a with-block:
    nothing where it sets none; else one threadpoolctl controller per process (finding
    the loaded BLAS libraries took ~20 ms, on every fit when made per call)."""
    limits = factor.blas_limits()
    if limits is None:
        return contextlib.nullcontext()
    return _blas_controller().limit(limits=limits)


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


class CholmodFactor:
    """CHOLMOD supernodal/simplicial factor, analysed once per model."""

    def __init__(self, pattern: sp.csc_matrix, ordering: str) -> None:
        self.ordering = ordering
        self._f = analyze(pattern, mode="auto", ordering_method=ordering)

    def update(self, M: sp.csc_matrix) -> None:
        """Numeric refactorization of M + I (M: lower triangle of Lambda'Z'WZ Lambda)."""
        try:
            self._f.cholesky_inplace(M, beta=1.0)
        except CholmodNotPositiveDefiniteError as exc:
            raise np.linalg.LinAlgError(str(exc)) from None

    def logdet(self) -> float:
        return float(self._f.logdet())

    def blas_limits(self) -> dict[str, int] | None:
        """numpy's and scipy's bundled OpenBLAS only do p x p work beside CHOLMOD; their
        idle threads spinning next to CHOLMOD's BLAS threads slowed fits 10-80x."""
        return {"libscipy_openblas": 1}

    def half_solve(self, R: np.ndarray) -> np.ndarray:
        return np.asarray(self._f.solve_L(self._f.apply_P(R), use_LDLt_decomposition=False))

    def half_solve_t(self, V: np.ndarray) -> np.ndarray:
        return np.asarray(self._f.apply_Pt(self._f.solve_Lt(V, use_LDLt_decomposition=False)))

    def nnz_L(self) -> int:
        return int(self._f.L().nnz)

    def level_blocks(self, off: int, p: int, levels: np.ndarray) -> np.ndarray:
        """Diagonal blocks of M^-1 (levels x p x p) by sparse solves L^-1 P E."""
        q = self._f.P().shape[0]
        cols = off + (levels[:, None] * p + np.arange(p)[None, :]).ravel()
        m = len(cols)
        E = sp.csc_matrix((np.ones(m), (cols, np.arange(m))), shape=(q, m))
        X = sp.csc_matrix(self._f.solve_L(self._f.apply_P(E), use_LDLt_decomposition=False))
        out = np.empty((len(levels), p, p))
        for a in range(p):
            for c in range(a, p):
                vals = np.asarray(X[:, a::p].multiply(X[:, c::p]).sum(axis=0)).ravel()
                out[:, a, c] = out[:, c, a] = vals
        return out


class SchurFactor:
    """Block elimination of the first term, dense Cholesky of the Schur complement."""

    ordering = "first term, then dense Schur complement"

    def __init__(self, p1: int, n1: int, q: int) -> None:
        self.p1, self.n1, self.q = p1, n1, q
        self._Sinv: np.ndarray | None = None
        self._Linv: np.ndarray | None = None

    def update(self, M: sp.csc_matrix) -> None:
        n1, p1 = self.n1, self.p1
        left, right = _column_split(M, n1)  # columns :n1 (D above, B below) and n1:
        if p1 == 1:  # D is diagonal: the only entries of the left columns above row n1
            below = left.indices >= n1
            d = np.ones(n1)
            cols = np.repeat(np.arange(n1), np.diff(left.indptr))
            d[cols[~below]] += left.data[~below]
            self.LD, self.Dinv = np.sqrt(d)[:, None, None], (1.0 / d)[:, None, None]
            Bc = sp.csc_matrix(
                (left.data[below], left.indices[below] - n1, np.r_[0, np.cumsum(
                    np.bincount(cols[below], minlength=n1))]),
                shape=(self.q - n1, n1),
            )  # fmt: skip
            self.B = Bc.tocsr()
            self.BD = sp.csr_matrix(Bc.multiply(1.0 / d[None, :]))
        else:
            D = _blocks_of(left[:n1], p1) + np.eye(p1)[None, :, :]
            self.LD = np.asarray(np.linalg.cholesky(D), dtype=np.float64)
            self.Dinv = np.asarray(np.linalg.inv(D), dtype=np.float64)
            self.B = sp.csr_matrix(left[n1:])
            self.BD = (self.B @ block_diagonal(self.Dinv)).tocsr()
        # right columns hold rows >= n1 only (lower triangle): shift, no slicing
        lower = sp.csc_matrix(
            (right.data, right.indices - n1, right.indptr), shape=(self.q - n1,) * 2
        ).toarray()
        S = lower + np.tril(lower, -1).T - (self.BD @ self.B.T).toarray()
        S[np.diag_indices_from(S)] += 1.0
        LS, info = lapack.dpotrf(S, lower=1, clean=1)
        if info != 0:
            raise np.linalg.LinAlgError("Schur complement is not positive definite")
        self.LS = LS
        self._Sinv = self._Linv = None

    def blas_limits(self) -> dict[str, int] | None:
        """Threads pay off only for a large dense Schur complement (LAPACK via scipy)."""
        return None if self.q - self.n1 >= DENSE_THREADS_FROM else {"libscipy_openblas": 1}

    def logdet(self) -> float:
        ld = 2.0 * np.sum(np.log(np.diagonal(self.LD, axis1=1, axis2=2)))
        return float(ld + 2.0 * np.sum(np.log(np.diag(self.LS))))

    def _split(self, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        R2d = R.reshape(self.q, -1)
        return R2d[: self.n1], R2d[self.n1 :]

    def half_solve(self, R: np.ndarray) -> np.ndarray:
        R1, R2 = self._split(R)
        y1 = _block_solve(self.LD, R1, self.p1)
        y2 = la.solve_triangular(self.LS, R2 - self.BD @ R1, lower=True, check_finite=False)
        return np.vstack([y1, y2]).reshape(R.shape)

    def half_solve_t(self, V: np.ndarray) -> np.ndarray:
        V1, V2 = self._split(V)
        w2 = la.solve_triangular(self.LS, V2, lower=True, trans="T", check_finite=False)
        w1 = _block_solve(np.transpose(self.LD, (0, 2, 1)), V1, self.p1) - self.BD.T @ w2
        return np.vstack([w1, w2]).reshape(V.shape)

    def nnz_L(self) -> int:
        n2 = self.q - self.n1
        return int(self.n1 * (self.p1 + 1) // 2 + self.B.nnz + n2 * (n2 + 1) // 2)

    def inverse_factor(self) -> np.ndarray:
        """L_S^-1 (dense lower triangular), computed once per update."""
        if self._Linv is None:
            Linv, info = lapack.dtrtri(self.LS, lower=1)
            if info != 0:
                raise np.linalg.LinAlgError("Schur factor is singular")
            self._Linv = np.tril(Linv)
        return self._Linv

    def schur_inverse(self) -> np.ndarray:
        """S^-1 (dense), computed once per update."""
        if self._Sinv is None:
            c, info = lapack.dpotri(self.LS, lower=1)
            if info != 0:
                raise np.linalg.LinAlgError("Schur complement is singular")
            self._Sinv = np.tril(c) + np.tril(c, -1).T
        return self._Sinv

    def block_sums(self, layout: TermLayout) -> list[np.ndarray]:
        """SB_k = sum over the levels of term k of its p x p diagonal blocks of M^-1:

            SB_1 = sum_l D_l^-1 + [ tr(S^-1 K_ac) ]_ac,   K_ac = (B D^-1)_a (B D^-1)_c'
            SB_k = sum_l (S^-1)_ll                          (k >= 2)

        Two ways to the traces, whichever costs less: S^-1 itself (LAPACK potri) gathered
        on the pattern of K, or X = L_S^-1 (trtri, half of potri) with
        tr(S^-1 K_ac) = <X (B D^-1)_a, X (B D^-1)_c>_F  and  (S^-1)_ab = <X e_a, X e_b>."""
        sums = [self.Dinv.sum(axis=0)]
        n2 = self.q - self.n1
        if n2 == 0:
            return sums
        # sparse x dense runs ~8x slower per flop than LAPACK here
        via_inverse = n2**3 / 3 < 8 * n2 * self.BD.nnz
        sums[0] += self._first_traces_inverse() if via_inverse else self._first_traces_factor()
        for off, p, nl in trailing_terms(layout, self.n1):
            idx = off + np.arange(nl)[:, None] * p + np.arange(p)[None, :]
            if via_inverse:
                sums.append(self.schur_inverse()[idx[:, :, None], idx[:, None, :]].sum(axis=0))
            else:
                X = self.inverse_factor()
                sums.append(np.einsum("rla,rlb->ab", X[:, idx], X[:, idx]))
        return sums

    def _first_traces_inverse(self) -> np.ndarray:
        """[tr(S^-1 K_ac)] from S^-1 gathered on the pattern of K_ac."""
        p1, Sinv, BD = self.p1, self.schur_inverse(), self.BD
        out = np.zeros((p1, p1))
        for a in range(p1):
            for c in range(a, p1):
                K = (BD[:, a::p1] @ BD[:, c::p1].T).tocoo()
                out[a, c] = out[c, a] = float(np.sum(Sinv[K.row, K.col] * K.data))
        return out

    def _first_traces_factor(self) -> np.ndarray:
        """[tr(S^-1 K_ac)] as Frobenius products of X (B D^-1), a chunk of levels at a
        time."""
        p1, X = self.p1, self.inverse_factor()
        BDc = self.BD.tocsc()
        out = np.zeros((p1, p1))
        for l0 in range(0, self.n1, TRACE_CHUNK * p1):
            XB = np.asarray(BDc[:, l0 : l0 + TRACE_CHUNK * p1].T @ X.T)  # (chunk, n2)
            for a in range(p1):
                for c in range(a, p1):
                    out[a, c] += float(np.sum(XB[a::p1] * XB[c::p1]))
        return np.triu(out) + np.triu(out, 1).T

    def level_blocks(self, off: int, p: int, levels: np.ndarray) -> np.ndarray:
        """Diagonal blocks of M^-1: D_l^-1 + (B D^-1)_l' S^-1 (B D^-1)_l, or blocks of S^-1."""
        if self.q == self.n1 and off == 0:
            return self.Dinv[levels]
        Sinv = self.schur_inverse()
        if off >= self.n1:
            idx = off - self.n1 + levels[:, None] * p + np.arange(p)[None, :]
            return Sinv[idx[:, :, None], idx[:, None, :]]
        cols = (levels[:, None] * p + np.arange(p)[None, :]).ravel()
        BDc = self.BD[:, cols].tocsc()
        SBD = np.asarray(BDc.T @ Sinv).T  # n2 x m
        out = self.Dinv[levels].copy()
        for a in range(p):
            for c in range(p):
                out[:, a, c] += np.asarray(BDc[:, a::p].multiply(SBD[:, c::p]).sum(axis=0)).ravel()
        return out


def trailing_terms(layout: TermLayout, n1: int) -> list[tuple[int, int, int]]:
    """(offset in S, p, levels) of each term after the first."""
    return [
        (off - n1, p, nl)
        for off, p, nl in zip(layout.offsets[1:], layout.p[1:], layout.nlevels[1:])
    ]


def _column_split(M: sp.csc_matrix, n1: int) -> tuple[sp.csc_matrix, sp.csc_matrix]:
    """Columns :n1 and n1: of a CSC matrix, by slicing its arrays (no copy of indices)."""
    cut = M.indptr[n1]
    left = sp.csc_matrix(
        (M.data[:cut], M.indices[:cut], M.indptr[: n1 + 1]), shape=(M.shape[0], n1)
    )
    right = sp.csc_matrix(
        (M.data[cut:], M.indices[cut:], M.indptr[n1:] - cut), shape=(M.shape[0], M.shape[1] - n1)
    )
    return left, right


def _blocks_of(M11: sp.csc_matrix, p: int) -> np.ndarray:
    """The p x p diagonal blocks of a block-diagonal matrix stored as its lower triangle."""
    coo = sp.coo_matrix(M11)
    blocks = np.zeros((M11.shape[0] // p, p, p))
    r, c = coo.row, coo.col
    np.add.at(blocks, (r // p, r % p, c % p), coo.data)
    off = r != c
    np.add.at(blocks, (r[off] // p, c[off] % p, r[off] % p), coo.data[off])
    return blocks


def _block_solve(T: np.ndarray, R: np.ndarray, p: int) -> np.ndarray:
    """Solve with each p x p block of T (levels x p x p) against R's rows, level by level."""
    m = R.shape[1]
    if p == 1 or m == 0:
        return R / T[:, 0, :] if m else R.copy()
    Rb = R.reshape(T.shape[0], p, m)
    return np.linalg.solve(T, Rb).reshape(-1, m)


def block_diagonal(blocks: np.ndarray) -> sp.csc_matrix:
    """Sparse block-diagonal matrix from a (levels, p, p) array."""
    nl, p, _ = blocks.shape
    base = np.arange(nl)[:, None, None] * p
    rows = np.broadcast_to(base + np.arange(p)[None, :, None], blocks.shape).ravel()
    cols = np.broadcast_to(base + np.arange(p)[None, None, :], blocks.shape).ravel()
    return sp.csc_matrix((blocks.ravel(), (rows, cols)), shape=(nl * p, nl * p))


class MappedSchurFactor(SchurFactor):
    """``SchurFactor`` when the first term is scalar, with S formed from theta directly.

    With A = Z'WZ, a = diag(A11), theta_1 the first term's scale and Lambda_2 the other
    terms' block of Lambda (block diagonal; diagonal when every trailing term is scalar):

        D = theta_1^2 diag(a) + I,     B D^-1 = theta_1 Lambda_2' A21 D^-1,
        S = Lambda_2' K(theta_1) Lambda_2 + I,   K(theta_1) = A22 - A21 diag(w) A12,
        w = theta_1^2 / (theta_1^2 a + 1)

    K's correction is a fixed linear map of w:  (A21 diag(w) A12)_jk = sum_s w_s A_js A_ks,
    summed over the levels s of the first term that meet both j and k.  ``G`` holds that
    map (one row per Fortran-order position of K that some level reaches, one column per
    level, the products A_js A_ks as values), built once per pattern, its values once per set of
    cross-products; per theta a sparse mat-vec G w replaces the sparse product B D^-1 B'.
    Only K's lower triangle is mapped, and the upper half of each p x p level block of a
    vector term; the congruence Lambda_2' K Lambda_2 is done in place, term by term
    (scaling the rows and columns of a scalar term, p x p products for a vector term's),
    or, when Lambda_2 = diag(lam), as S = (lam lam') o A22 - (lam lam') o G w + I in one
    pass.  With the same map the gradient's first trace is

        tr(S^-1 B D^-2 B') = < Lambda_2 S^-1 Lambda_2', H >,   H = G (theta_1^2 / d^2),

    summed over the positions G reaches in the lower triangle, off-diagonal ones twice,
    with S^-1 from LAPACK trtri + lauum (in single precision for a large S when a probe
    residual allows, ``gradient_inverse_lower``) and the congruence done in place on it
    (a scaling when Lambda_2 is diagonal); the trailing block sums are gathered from the
    lower triangle of S^-1 first.
    """

    def __init__(self, A: sp.csc_matrix, n1: int, terms: list[tuple[int, int, int]]) -> None:
        """``terms``: (offset in S, p, levels) of each trailing term."""
        super().__init__(1, n1, A.shape[0])
        self.n2 = self.q - n1
        self.terms = terms
        self.diagonal = all(p == 1 for _, p, _ in terms)  # Lambda_2 is diagonal
        self._block_lower, self._block_upper = _vector_block_halves(terms, self.n2)
        self._buffers: dict[str, np.ndarray] = {}
        self._pattern: tuple[np.ndarray, np.ndarray] | None = None
        self._Sinv_lower: np.ndarray | None = None
        self._Sinv_grad: np.ndarray | None = None
        self._Gm: np.ndarray | None = None
        self._squares: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._products: tuple[float, np.ndarray, np.ndarray] | None = None  # _map_products
        self._single = True  # the gradient's S^-1 may be single (SINGLE_FROM)
        self.set_crossproducts(A)

    @staticmethod
    def map_size(A: sp.csc_matrix, n1: int) -> int:
        """Non-zeros of the map G: sum over levels of k (k + 1) / 2, k = the level's
        non-zeros below the first block (-1 if a level has none on the diagonal)."""
        k = np.diff(A.indptr[: n1 + 1]) - 1
        return int(np.sum(k * (k + 1) // 2)) if np.all(k >= 0) else -1

    @staticmethod
    def fits(A: sp.csc_matrix, n1: int, max_pairs: int = 50_000_000) -> bool:
        """Whether the map G stays small."""
        return 0 <= MappedSchurFactor.map_size(A, n1) <= max_pairs

    def set_crossproducts(self, A: sp.csc_matrix) -> None:
        """New values of Z'WZ (same pattern for PIRLS: the map's structure is kept)."""
        if not A.has_sorted_indices:
            A = A.copy()
            A.sort_indices()
        if not self._same_pattern(A):
            self._build_map(A)
            if not self.diagonal:  # the congruence starts from a dense copy of A22
                self.A22 = np.zeros((self.n2, self.n2), order="F")  # then only its pattern is set
        data = A.data
        self._products = None
        self.a = data[self._diag]  # diagonal of A11: first entry of each level's column
        value = data[self._below]  # of the entries below the first block
        self._pair_products(value)
        self._a22_values = data[self._cut :]  # lower triangle of A22
        if not self.diagonal:
            flat = self.A22.reshape(-1, order="F")
            flat[self._a22_pos] = self._a22_values
            flat[self._a22_mirror] = self._a22_values[self._a22_off]
        self.A21.data = value

    def _pair_products(self, value: np.ndarray) -> None:
        """G's values A_js A_ks, written into it in place, a chunk of entries at a time
        (an entry's pairs are its count consecutive ones: no full-size temporaries, as
        fresh pages are slow; PIRLS sets new values each pass)."""
        count, partner, out = self._count, self._partner, self.GT.data
        bounds = np.r_[0, np.cumsum(count)]  # where each entry's pairs start
        for e0, e1 in _run_chunks(bounds, 1 << 18):
            p = slice(bounds[e0], bounds[e1])
            np.multiply(np.repeat(value[e0:e1], count[e0:e1]), value[partner[p]], out=out[p])

    def _same_pattern(self, A: sp.csc_matrix) -> bool:
        if self._pattern is None:
            return False
        ptr, idx = self._pattern
        if A.indptr is ptr and A.indices is idx:
            return True
        return np.array_equal(ptr, A.indptr) and np.array_equal(idx, A.indices)

    def _build_map(self, A: sp.csc_matrix) -> None:
        """Pairs (j >= k) of entries below the first block within each level's column,
        and where A's stored values go (diagonal of A11, A21, the lower triangle of A22
        and its mirror within vector terms' level blocks).  G is stored transposed, one
        row per level with its pairs in the order they are generated, one column per
        position some level reaches (``_rows``, sorted): G w is then a scatter from w
        (no sort of the pairs by position)."""
        n1, n2 = self.n1, self.n2
        ptr, idx = A.indptr, A.indices
        if np.any(idx[ptr[:n1]] != np.arange(n1)):
            raise ValueError("first block is not diagonal")
        k = np.diff(ptr[: n1 + 1]) - 1  # entries below the first block, per level
        below = np.setdiff1d(np.arange(ptr[n1]), ptr[:n1], assume_unique=True)
        # pairs of entries below, as indices among them (their arrays stay in cache)
        self._count, self._partner = pairs_within_levels(k)
        row = (idx[below] - n1).astype(_index_dtype(n2 * n2))  # K's row of each entry
        key = np.repeat(row, self._count)  # each pair's position in K (r1 >= r2)
        for c in _chunks(len(key)):
            key[c] += row[self._partner[c]] * n2
        self._rows, column = _compress(key, n2 * n2)
        del key
        self._row_col = np.divmod(self._rows, n2)[::-1]  # (row, col) in K of each
        self._pair_weight = np.where(self._row_col[0] == self._row_col[1], 1.0, 2.0)
        self._off = np.flatnonzero(self._in_vector_block(self._rows))
        self._mirror = _mirror(self._rows[self._off], n2)
        self.GT = sp.csr_matrix(
            (np.zeros(len(column)), column, np.r_[0, np.cumsum(k * (k + 1) // 2)]),
            shape=(n1, len(self._rows)),
        )
        self._diag, self._below, self._cut = ptr[:n1].copy(), below, int(ptr[n1])
        self.A21 = sp.csc_matrix(
            (np.zeros(len(below)), idx[below] - n1, np.r_[0, np.cumsum(k)]), shape=(n2, n1)
        )
        self._a21_cols = np.repeat(np.arange(n1), k)
        right_cols = np.repeat(np.arange(n2), np.diff(ptr[n1:]))
        self._a22_pos = (idx[self._cut :] - n1) + right_cols * n2
        self._a22_row_col = (idx[self._cut :] - n1, right_cols)
        self._a22_off = np.flatnonzero(self._in_vector_block(self._a22_pos))
        self._a22_mirror = _mirror(self._a22_pos[self._a22_off], n2)
        self._pattern = (ptr, idx)
        self._squares = None

    def schur_density(self) -> float:
        """Share of non-zeros in the pattern of S (A22's and the map's positions, both
        halves), 1 for n2 <= SMALL_SCHUR: ``pls._schur_density`` without a product."""
        if self.n2 <= SMALL_SCHUR:
            return 1.0
        rows, a22 = self._rows, self._a22_pos  # (rows sorted and distinct)
        at = np.minimum(np.searchsorted(rows, a22), len(rows) - 1)
        lower = np.concatenate([rows, np.unique(a22[rows[at] != a22])])
        diagonal = int(np.count_nonzero(lower % (self.n2 + 1) == 0))
        return (2 * len(lower) - diagonal) / float(self.n2) ** 2

    def _G_times(self, w: np.ndarray) -> np.ndarray:
        """G w: at each position of ``_rows``, sum_s w_s A_js A_ks."""
        return self.GT.T @ w

    def _in_vector_block(self, pos: np.ndarray) -> np.ndarray:
        """Which Fortran-order positions of S lie below the diagonal of one level's
        p x p block of a vector term: the only entries above the diagonal that the
        congruence reads, so the only ones mirrored (see ``_congruence``)."""
        block = np.arange(self.n2) + self.n2  # one block per index: scalar terms
        for off, p, nl in self.terms:
            if p > 1:
                block[off : off + p * nl] = off + np.arange(p * nl) // p
        col, row = np.divmod(pos, self.n2)
        return (row != col) & (block[row] == block[col])

    def _mapped(self, v: np.ndarray, into: np.ndarray) -> np.ndarray:
        """into += A21 diag(w) A12 (n2 x n2, Fortran order) given v = G w: its lower
        triangle and the upper halves of vector terms' level blocks."""
        flat = into.reshape(-1, order="F")
        flat[self._rows] += v
        flat[self._mirror] += v[self._off]
        return into

    def update_theta(self, theta1: float, Lambda2: sp.csc_matrix, T: list[np.ndarray]) -> None:
        """Refactor at theta: theta_1 scales the first term; Lambda2 (n2 x n2) is the
        others' block of Lambda and T their T_k (in the order of ``terms``)."""
        t2 = theta1 * theta1
        d = t2 * self.a + 1.0
        self.theta1, self.d = theta1, d
        self.LD, self.Dinv = np.sqrt(d)[:, None, None], (1.0 / d)[:, None, None]
        self.T, self.lam = T, Lambda2.diagonal()  # lam: Lambda_2 itself when diagonal
        BD = self.A21.copy()
        BD.data = BD.data * (theta1 / d)[self._a21_cols]
        correction, self._H = self._map_products(theta1, t2 / d, t2 / (d * d))
        if self.diagonal:
            S = self._scaled_K(correction)
            BD.data *= self.lam[BD.indices]
            self.BD = sp.csc_matrix(BD)
        else:
            K = self._work("S")
            np.copyto(K, self.A22)
            S = self._congruence(self._mapped(-correction, K))
            self.BD = sp.csc_matrix(Lambda2.T @ BD)
        S[np.diag_indices_from(S)] += 1.0
        LS, info = lapack.dpotrf(S, lower=1, clean=0, overwrite_a=1)
        if info != 0:
            raise np.linalg.LinAlgError("Schur complement is not positive definite")
        self.LS = LS
        self._Sinv = self._Linv = self._Sinv_lower = self._Sinv_grad = self._Gm = None

    def _map_products(self, theta1: float, w: np.ndarray, h: np.ndarray):
        """K's correction G w and the gradient's H = G h in one pass over the map; both
        depend on theta_1 alone, so they are kept for the next update with the same
        theta_1 (the convergence checks move the other terms' theta one at a time)."""
        if self._products is None or self._products[0] != theta1:
            mapped = self._G_times(np.column_stack([w, h]))
            self._products = (theta1, mapped[:, 0], mapped[:, 1])
        return self._products[1], self._products[2]

    def _scaled_K(self, correction: np.ndarray) -> np.ndarray:
        """(lam lam') o K(w), lower triangle, written entry by entry (Lambda_2 diagonal):
        zeros, A22's stored entries, then the map's correction G w (both sparse in a
        dense S)."""
        S, lam = self._work("S"), self.lam
        _zero_lower(S)
        flat = S.reshape(-1, order="F")
        r, c = self._a22_row_col
        flat[self._a22_pos] = self._a22_values * (lam[r] * lam[c])
        r, c = self._row_col
        flat[self._rows] -= correction * (lam[r] * lam[c])
        return S

    def _congruence(self, K: np.ndarray, transposed: bool = False) -> np.ndarray:
        """The lower triangle of Lambda_2' K Lambda_2 (Lambda_2 K Lambda_2' when
        ``transposed``), in place (K Fortran order, valid in its lower triangle and in
        vector terms' p x p level blocks): a trailing term's columns times I (x) T_k, then
        its rows times I (x) T_k'; a scalar term's are scaled.  A lower entry of the result
        reads only lower entries of K and the entries of its own level block (the rest
        above the diagonal is left garbage)."""
        for (off, p, nl), T in zip(self.terms, self.T):
            T = T.T if transposed else T
            end = off + p * nl
            if p == 1:
                K[:, off:end] *= T[0, 0]
                K[off:end, :] *= T[0, 0]
                continue
            cols = K[:, off:end].T.reshape(nl, p, self.n2)  # a level's p columns
            K[:, off:end] = np.matmul(T.T, cols).reshape(nl * p, self.n2).T
            rows = K[off:end, :].reshape(nl, p, self.n2)
            K[off:end, :] = np.matmul(T.T, rows).reshape(nl * p, self.n2)
        return K

    def update(self, M: sp.csc_matrix) -> None:  # pragma: no cover - PLS calls update_theta
        raise TypeError("MappedSchurFactor is updated from theta (update_theta)")

    def nnz_L(self) -> int:
        n2 = self.n2
        return int(self.n1 + self.BD.nnz + n2 * (n2 + 1) // 2)

    def schur_inverse_lower(self) -> np.ndarray:
        """S^-1 = L_S^-T L_S^-1, lower triangle valid, computed once per update: LAPACK
        trtri then lauum (potri's two halves; OpenBLAS threads each, not potri)."""
        if self._Sinv_lower is None:
            self._Gm = None  # it lives in the same buffer
            self._Sinv_lower = _triangular_inverse_gram(self.LS, self._work("Sinv"))
        return self._Sinv_lower

    def gradient_inverse_lower(self) -> np.ndarray:
        """S^-1 for the gradient's traces (lower triangle valid).  For a large S in single
        precision, which halves the LAPACK time, kept when a probe's residual
        |S X v - v| / |v| is at most SINGLE_RESIDUAL (then each trace's relative error is
        of that order); otherwise, and for small S, the double-precision inverse."""
        if self._Sinv_lower is not None or self.n2 < SINGLE_FROM or not self._single:
            return self.schur_inverse_lower()
        if self._Sinv_grad is None:
            X32 = _triangular_inverse_gram(self.LS, self._work("Sinv32", np.float32))
            ok = _inverse_residual(self.LS, X32) <= SINGLE_RESIDUAL
            self._Sinv_grad = X32 if ok else self.schur_inverse_lower()
        return self._Sinv_grad

    def allow_single_precision(self, allow: bool) -> None:
        """Whether the gradient's S^-1 may be single precision; a change drops what was
        computed from the current one."""
        if allow != self._single:
            self._single = allow
            if self._Sinv_grad is not None and self._Sinv_grad is not self._Sinv_lower:
                self._Sinv_grad = None
            self._Gm = None

    def _work(self, name: str, dtype: type = np.float64) -> np.ndarray:
        """A dense n2 x n2 Fortran-order buffer kept across updates (a fresh one each
        theta cost its page faults: ~0.1 s at n2 = 5,000): "S" holds K, then S, then
        L_S; "Sinv" S^-1 (then Lambda_2 S^-1 Lambda_2'); "Sinv32" the gradient's
        single-precision S^-1."""
        buf = self._buffers.get(name)
        if buf is None:
            buf = self._buffers[name] = np.zeros((self.n2, self.n2), dtype=dtype, order="F")
        return buf

    def schur_inverse(self) -> np.ndarray:
        if self._Sinv is None:
            c = self.schur_inverse_lower()
            self._Sinv = np.tril(c) + np.tril(c, -1).T
        return self._Sinv

    def block_sums(self, layout: TermLayout) -> list[np.ndarray]:
        """SB_k (see ``SchurFactor.block_sums``): the trailing terms' blocks gathered from
        the lower triangle of S^-1, then the first trace via the map G (which may
        overwrite that S^-1)."""
        trailing = [self.trailing_block_sum(off, p, nl) for off, p, nl in self.terms]
        return [self.Dinv.sum(axis=0) + self.first_trace(), *trailing]

    def first_trace(self) -> np.ndarray:
        """[[tr(S^-1 B D^-2 B')]] = < Lambda_2 S^-1 Lambda_2', H >, H = G (theta_1^2/d^2)
        (mapped with K at the update), a sum over the lower-triangle positions G reaches
        (off-diagonal ones twice): with Lambda_2 diagonal (lam) by scaling, else by the
        congruence done in place on S^-1."""
        if self.diagonal:
            r, c = self._row_col
            Sinv = self.gradient_inverse_lower().reshape(-1, order="F")[self._rows]
            weight = self._pair_weight * self.lam[r] * self.lam[c]
            return np.array([[float(np.sum(self._H * weight * Sinv))]])
        Y = self.congruent_inverse().reshape(-1, order="F")  # Lambda_2 S^-1 Lambda_2'
        return np.array([[float(np.sum(self._H * self._pair_weight * Y[self._rows]))]])

    def congruent_inverse(self) -> np.ndarray:
        """Gm = Lambda_2 S^-1 Lambda_2' (lower triangle valid), once per update, in the
        buffer of the gradient's S^-1, which it consumes (the first trace's congruence,
        and the row leverages of ``leverage``)."""
        if self._Gm is None:
            Y = self._consume_gradient_inverse()
            flat = Y.reshape(-1, order="F")
            flat[self._block_upper] = flat[self._block_lower]
            self._Gm = self._congruence(Y, transposed=True)
        return self._Gm

    def level_squares(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The structure of P with (P Gm[positions])_e = sum_k Gm_jk A21_kl for each entry
        e = (j, l) of A21: one row per entry, one column per position of the map
        (``positions``, lower triangle) for each partner k in the same column of A21:
        (indptr, indices, src), src the partner's entry (P.data = A21.data[src]).  Built
        once per pattern."""
        if self._squares is None:
            self._squares = _level_squares(self.A21, self._rows, self.n2)
        return self._squares

    @property
    def a21_levels(self) -> np.ndarray:
        """The level (column of A21) of each entry of A21.data."""
        return self._a21_cols

    @property
    def positions(self) -> np.ndarray:
        """Fortran-order positions in S (lower triangle) that the map G reaches."""
        return self._rows

    def _consume_gradient_inverse(self) -> np.ndarray:
        """The gradient's S^-1, to be overwritten: the caches held in it are dropped (the
        symmetric ``_Sinv`` is a copy and stays)."""
        Y = self.gradient_inverse_lower()
        if Y.dtype != np.float64:  # the single-precision S^-1, into the double buffer
            self._Gm = None  # it lives there
            X = self._work("Sinv")
            np.copyto(X, Y)
            Y = X
        if Y is self._Sinv_lower:
            self._Sinv_lower = None
        self._Sinv_grad = None
        return Y

    def trailing_block_sum(self, off: int, p: int, nl: int) -> np.ndarray:
        """sum over the levels of a trailing term (at ``off`` in S) of its p x p
        diagonal blocks of S^-1, from the lower triangle."""
        Sinv = self.gradient_inverse_lower()
        base = off + np.arange(nl) * p
        out = np.empty((p, p))
        for a in range(p):
            for c in range(a + 1):
                out[a, c] = out[c, a] = Sinv[base + a, base + c].sum(dtype=np.float64)
        return out


def _vector_block_halves(
    terms: list[tuple[int, int, int]], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fortran-order positions (lower, mirrored upper) of the entries below the diagonal
    of each level's p x p block of the vector terms in an n x n matrix."""
    lower = [np.zeros(0, dtype=np.int64)]
    for off, p, nl in terms:
        a, c = np.tril_indices(p, -1)
        base = off + np.arange(nl)[:, None] * p
        lower.append(((base + a) + (base + c) * n).ravel())
    pos = np.concatenate(lower)
    return pos, _mirror(pos, n)


def _triangular_inverse_gram(L: np.ndarray, out: np.ndarray) -> np.ndarray:
    """(L L')^-1 = L^-T L^-1 in ``out`` (its dtype), lower triangle valid: trtri, lauum."""
    np.copyto(out, L)
    single = out.dtype == np.float32
    trtri, lauum = (lapack.strtri, lapack.slauum) if single else (lapack.dtrtri, lapack.dlauum)
    X, info = trtri(out, lower=1, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError("Schur complement is singular")
    X, _ = lauum(X, lower=1, overwrite_c=1)
    return X


def _inverse_residual(L: np.ndarray, X: np.ndarray) -> float:
    """|L L' X v - v| / |v| for a fixed pseudo-random v, X symmetric given by its lower
    triangle (double or single precision): how far X is from (L L')^-1 (O(n^2))."""
    v = np.asarray(np.random.default_rng(0).standard_normal(L.shape[0]), dtype=np.float64)
    if X.dtype == np.float32:
        y = np.asarray(blas.ssymv(1.0, X, v.astype(np.float32), lower=1), dtype=np.float64)
    else:
        y = blas.dsymv(1.0, X, v, lower=1)
    r = blas.dtrmv(L, blas.dtrmv(L, y, lower=1, trans=1), lower=1) - v
    return float(np.linalg.norm(r) / np.linalg.norm(v))


def pairs_within_levels(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i1 >= i2) within runs of k consecutive entries (one run per level: a
    level's entries below the first block, or a row's trailing entries): (count, i2),
    count[e] the pairs of entry e (with itself and those before it in its run) and i2
    their partners, entry by entry; i1 = np.repeat(arange, count) is left to the caller,
    usually as np.repeat(values, count).  int32 where they fit: these arrays are the
    largest of a model's set-up."""
    n = int(np.sum(k))
    rank = np.arange(n) - np.repeat(np.cumsum(k) - k, k)  # position in its run
    first = np.cumsum(rank + 1) - (rank + 1)  # where its pairs start
    total = int(first[-1] + rank[-1] + 1) if n else 0
    dtype = _index_dtype(n + total + 1)
    count = (rank + 1).astype(dtype)
    i2 = np.repeat((np.arange(n) - rank - first).astype(dtype), count)
    i2 += np.arange(total, dtype=dtype)
    return count, i2


def _zero_lower(S: np.ndarray, block: int = 128) -> None:
    """Zero the lower triangle of a Fortran-order S, block column by block column (the
    rest is never written: the entries and L_S live below the diagonal)."""
    for c0 in range(0, S.shape[1], block):
        S[c0:, c0 : c0 + block] = 0.0


def _chunks(n: int, size: int = 1 << 18) -> list[slice]:
    """Slices of ``size`` covering range(n)."""
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def _run_chunks(bounds: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Ranges (e0, e1) of entries covering all of them, entry e owning the items
    bounds[e]:bounds[e + 1] (``bounds`` cumulative, from 0): each range starts where an
    item at a multiple of ``size`` falls, so it holds about ``size`` items (at least one
    entry)."""
    starts = np.searchsorted(bounds, np.arange(0, bounds[-1], size))
    cuts = np.unique(np.r_[starts, len(bounds) - 1])
    return list(zip(cuts[:-1].tolist(), cuts[1:].tolist()))


def _index_dtype(bound: int) -> np.dtype:
    """An integer dtype for values below ``bound``: int32 where it can."""
    return np.dtype(np.int32 if bound < 2**31 else np.int64)


def _compress(key: np.ndarray, bound: int) -> tuple[np.ndarray, np.ndarray]:
    """(the sorted distinct values of ``key``, each entry's index among them, written
    over ``key`` when it is int32), by a lookup table of ``bound`` entries (no sort)."""
    seen = np.zeros(bound, dtype=bool)
    seen[key] = True
    values = np.flatnonzero(seen)
    del seen
    lookup = _position_lookup(values, bound)
    out = key if key.dtype == lookup.dtype else None  # (no fresh pages for the result)
    return values, np.take(lookup, key, out=out, mode="clip")  # (clip: take unbuffered)


def _position_lookup(positions: np.ndarray, bound: int) -> np.ndarray:
    """A table of ``bound`` entries giving each of ``positions`` its index among them
    (int32; 4 bound bytes, held only while it is used)."""
    lookup = np.zeros(bound, dtype=np.int32)
    lookup[positions] = np.arange(len(positions), dtype=np.int32)
    return lookup


def _level_squares(
    A21: sp.csc_matrix, positions: np.ndarray, n2: int, chunk: int = 1 << 22
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``MappedSchurFactor.level_squares`` for A21 and the map's sorted ``positions``,
    built about ``chunk`` of P's entries at a time (each entry of A21 has one per
    partner; memory: P's 8 bytes per entry and a 4 n2^2-byte lookup while it runs)."""
    k = np.diff(A21.indptr)
    col = np.repeat(np.arange(A21.shape[1]), k)
    rep = k[col]  # partners of each entry: the entries of its column
    indptr = np.r_[0, np.cumsum(rep)]
    indices, src = np.empty(indptr[-1], np.int32), np.empty(indptr[-1], np.int32)
    lookup = _position_lookup(positions, n2 * n2)
    for e0, e1 in _run_chunks(indptr, chunk):
        e = np.arange(e0, e1)
        r = np.repeat(e, rep[e])
        partner = np.repeat(A21.indptr[col[e]], rep[e]) + (np.arange(len(r)) - np.repeat(
            indptr[e] - indptr[e0], rep[e]))  # fmt: skip
        j, m = A21.indices[r], A21.indices[partner]
        lo, hi = indptr[e0], indptr[e[-1] + 1]
        indices[lo:hi] = lookup[np.maximum(j, m) + np.minimum(j, m) * n2]
        src[lo:hi] = partner
    return indptr, indices, src


def _mirror(pos: np.ndarray, n: int) -> np.ndarray:
    """Fortran-order positions (i, j) -> (j, i) in an n x n matrix."""
    col, row = np.divmod(pos, n)
    return col + row * n
