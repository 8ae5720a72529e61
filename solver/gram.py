"""The products over the first term's levels (patients at 10M EHR rows), on all cores.

With A12 (n1 x n2, CSR: one row per level s of the first term) and weights w,

    A21 diag(w) A12 X = sum over chunks c of levels:  A12_c' (w_c * (A12_c X))

Each thread takes a contiguous range of levels (equal non-zeros) and walks it a chunk at a
time with two buffers of its own: T_c = A12_c X (n_c x m, gathers rows of X) and the
accumulated A12_c' (w_c T_c) (n2 x m, scatters rows of T_c); the threads' sums are added
at the end.  The n1 x m intermediate of the plain two products (5 GB for 640 vectors at
1M levels) never exists, and scipy's kernels run without the GIL, so the threads overlap.
The kernels are scipy's own ``csr_matvecs`` / ``csc_matvecs`` (Y += A X, what ``A @ X``
calls after allocating Y), called on the buffers so nothing is allocated per chunk.  They
are private to scipy: checked once against ``A @ X`` at import, and where they do not
answer as expected the public products are used instead (allocating per chunk).

Locality: the gathers and scatters touch the rows of X and of the sum that a level's
entries name.  Given an order of the n2 columns in which each level's entries fall close
together (the preconditioner's clusters: a hospital with its physicians), the columns are
renumbered in that order and the levels sorted by the new position of their heaviest
entry (a patient with the hospital where most of their encounters are), so consecutive
levels work on the same few rows: at 10M EHR rows (13M entries, 96 columns) a product took
1.0 s instead of 1.8 s in float32 and 1.6 s instead of 5.0 s in float64.
"""

from __future__ import annotations

import copy
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
from scipy.sparse import _sparsetools

THREADS = max(1, min(4, len(os.sched_getaffinity(0))))
CHUNK_LEVELS = 8192  # levels per chunk: T_c is 8192 x m


class ChunkedGram:
    """X -> A21 diag(w) A12 X in ``dtype`` (float32 halves the memory traffic), with the
    columns renumbered in the order ``cols`` (and the levels after them) if given."""

    def __init__(
        self, A12: sp.csr_matrix, dtype: type = np.float64, cols: np.ndarray | None = None
    ) -> None:
        self.n1, self.n2 = A12.shape
        self.dtype = np.dtype(dtype)
        self.cols: np.ndarray | None = None
        self.rows: np.ndarray | None = None
        if cols is not None:
            self.cols = np.asarray(cols)
            self.rows, A12 = _renumbered(A12, self.cols)
        self.indptr, self.indices = A12.indptr, A12.indices
        self.data = A12.data.astype(dtype)
        self.ranges = _balanced_ranges(self.indptr, THREADS)

    def astype(self, dtype: type) -> ChunkedGram:
        """The same products in ``dtype`` (the index arrays and orders shared)."""
        other = copy.copy(self)
        other.dtype, other.data = np.dtype(dtype), self.data.astype(dtype)
        return other

    def __call__(self, w: np.ndarray, X: np.ndarray) -> np.ndarray:
        if self.cols is not None and self.rows is not None:
            w, X = w[self.rows], X[self.cols]
        Xd = np.ascontiguousarray(X, dtype=self.dtype)
        wd = w.astype(self.dtype)
        with ThreadPoolExecutor(len(self.ranges)) as pool:
            parts = list(pool.map(lambda r: self._range(wd, Xd, *r), self.ranges))
        out = parts[0].astype(np.float64)
        for part in parts[1:]:
            out += part
        if self.cols is None:
            return out
        back = np.empty_like(out)
        back[self.cols] = out
        return back

    def _range(self, w: np.ndarray, X: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """sum over the chunks c of levels lo..hi of A12_c' (w_c * (A12_c X))."""
        acc = np.zeros((self.n2, X.shape[1]), dtype=self.dtype)
        T = np.empty((min(CHUNK_LEVELS, hi - lo), X.shape[1]), dtype=self.dtype)
        for start in range(lo, hi, CHUNK_LEVELS):
            stop = min(start + CHUNK_LEVELS, hi)
            self._chunk(start, stop, w[start:stop], X, T[: stop - start], acc)
        return acc

    def _chunk(self, start: int, stop: int, w, X, T: np.ndarray, acc: np.ndarray) -> None:
        """T = A12_c X, T *= w_c, acc += A12_c' T for the rows c = start..stop (views of
        A12's arrays, indptr re-based; T and acc C-contiguous, so ravel() is a view)."""
        a, b = self.indptr[start], self.indptr[stop]
        ptr, idx, val = self.indptr[start : stop + 1] - a, self.indices[a:b], self.data[a:b]
        n, m = T.shape
        if not KERNELS:
            A = sp.csr_matrix((val, idx, ptr), shape=(n, self.n2))
            T[:] = A @ X
            T *= w[:, None]
            acc += A.T @ T
            return
        T.fill(0.0)
        _sparsetools.csr_matvecs(n, self.n2, m, ptr, idx, val, X.ravel(), T.ravel())
        T *= w[:, None]
        _sparsetools.csc_matvecs(self.n2, n, m, ptr, idx, val, T.ravel(), acc.ravel())


def _kernels_answer() -> bool:
    """Whether scipy's private csr_matvecs / csc_matvecs take these arguments and give
    A X and A' X (checked on a 3 x 2 example)."""
    A = sp.csr_matrix(np.array([[1.0, 0.0], [2.0, 3.0], [0.0, 4.0]]))
    X, Y = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 0.5], [2.0, 1.0], [3.0, 0.0]])
    AX, AtY = np.zeros((3, 2)), np.zeros((2, 2))
    try:
        _sparsetools.csr_matvecs(3, 2, 2, A.indptr, A.indices, A.data, X.ravel(), AX.ravel())
        _sparsetools.csc_matvecs(2, 3, 2, A.indptr, A.indices, A.data, Y.ravel(), AtY.ravel())
    except Exception:  # noqa: BLE001 - any failure means: use the public products
        return False
    return bool(np.allclose(AX, A @ X) and np.allclose(AtY, A.T @ Y))


KERNELS = _kernels_answer()


def _renumbered(A12: sp.csr_matrix, cols: np.ndarray) -> tuple[np.ndarray, sp.csr_matrix]:
    """(rows, A12 with rows ``rows`` and columns ``cols`` in that order): the levels
    sorted by the new position of their heaviest entry."""
    pos = np.empty(len(cols), dtype=np.int64)
    pos[cols] = np.arange(len(cols))
    counts = np.diff(A12.indptr)
    level = np.repeat(np.arange(A12.shape[0]), counts)
    by_weight = np.lexsort((-np.abs(A12.data), level))  # by level, heaviest first
    heaviest = pos[A12.indices[by_weight[A12.indptr[:-1][counts > 0]]]]
    key = np.full(A12.shape[0], len(cols), dtype=np.int64)  # empty levels last
    key[counts > 0] = heaviest
    rows = np.argsort(key, kind="stable")
    out = A12[rows]
    out.indices = pos[out.indices].astype(out.indices.dtype)
    out.has_sorted_indices = False
    out.sort_indices()
    return rows, out


def _balanced_ranges(indptr: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous row ranges with about equal non-zeros (empty ones dropped)."""
    n = len(indptr) - 1
    targets = np.linspace(0, indptr[-1], parts + 1)[1:-1]
    cuts = np.r_[0, np.searchsorted(indptr, targets), n]
    return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
