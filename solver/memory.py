"""The memory a fit will hold, estimated from its cross-products before it runs.

After ``prepare`` an LMM holds no rows; what its fit allocates is dominated by

    cross-products   Z'WZ (nnz(Z'Z) values and indices), Z'WX (q x p), X'WX, ...
                     and per theta a scaled copy Lambda'Z'WZ Lambda (nnz(M))
                     (GLMMs with the closed-form gradient: the level squares of
                     ``leverage``, about twice the pair map's entries)
    the factor       dense Schur complement (``SchurFactor``): S, its Cholesky factor
                     L_S and S^-1 or L_S^-1 for the gradient, n2 x n2 doubles each
                     (n2 = q - p_1 l_1, the columns after the first term), plus B D^-1;
                     CHOLMOD (``CholmodFactor``): nnz(L) values and row indices, nnz(L)
                     from a symbolic analysis (elimination tree and column counts under
                     the fill-reducing ordering, ``cholmod_analyze_ordering``)
    model rows       GLMMs only: the columnar buffer of the rows, Z and Z' as sparse
                     matrices and PIRLS' per-row vectors, O(n (p + width of Z + ...))

``estimate`` decides the factor exactly as the fit will (``pls.plan_factor`` and
``exact_or_iterative``; it raises ``FactorTooLarge`` where the fit would), at the cost
of a second symbolic analysis for CHOLMOD (0.04-0.5 s where fits took 3-90 s); a dense
Schur complement is sized without building it.  The constants below come from
``python -m benchmarks.memory_estimate`` (peak RSS of fits of InstEval, crossed, banded
and nested synthetic designs and a binary GLMM; benchmarks/results/memory-*.md): the
estimate was 1.2-2.1x the memory the fit added after the data pass, by design never
below it.  Not counted: the fixed footprint of the process (interpreter and libraries,
~150-250 MB) and the data pass's transient batches (bounded by the batch size).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .crossprod import CrossProducts
from .factor import MappedSchurFactor
from .model import ModelData
from .pls import ThetaMap, choose_factor, exact_or_iterative, plan_factor

SCHUR_COPIES = 6  # n2 x n2 doubles alive at the peak of an update and its gradient
CHOLMOD_BYTES_PER_NNZ = 24  # values, supernodal padding (~1.3x), indices, L's copy
SPARSE_BYTES_PER_NNZ = 12  # a float64 value and an int32 index
SQUARE_BYTES_PER_NNZ = 16  # value, column and source index (``leverage``'s P)
ROW_BYTES_PER_VALUE = 48  # GLMM: per value of a model row (X, y, w, Z's entries), all copies
FILL_GUESS = 20  # nnz(L) / nnz(M) when CHOLMOD's symbolic analysis cannot be reached
PAIR_GUESS = 8  # iterative path: cluster-block pairs per non-zero of A21 (EHR design: ~5)
ITERATIVE_COLUMNS = 130  # probes + deflation space + PCG right-hand sides
ITERATIVE_COPIES = 10  # Lanczos/PCG vectors of the trailing size alive at once
MB = 2**20
# Every fit, however small: the data pass's Arrow batches and their numpy copies, the
# formula's design objects, the result and its JSON, and what the allocator keeps of
# them.  Measured: a worker's RSS rose ~43 MB over its warm idle state per small fit
# (benchmarks/results/service-load-20261123-173513.md: +86 MB with 2 workers).
FIT_OVERHEAD_BYTES = 48 * MB


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a fit will hold beyond its process's fixed footprint, by part."""

    q: int  # random-effect columns
    nnz_ZtZ: int
    factor: str  # "dense Schur complement" or "CHOLMOD"
    n2: int  # columns of the dense Schur complement (0 with CHOLMOD)
    nnz_L: int  # of the Cholesky factor (symbolic; guessed when ``exact_L`` is False)
    exact_L: bool
    crossproducts_bytes: int
    factor_bytes: int
    rows_bytes: int  # GLMMs: model rows kept for PIRLS

    @property
    def total_bytes(self) -> int:
        parts = self.crossproducts_bytes + self.factor_bytes + self.rows_bytes
        return FIT_OVERHEAD_BYTES + parts

    def describe(self) -> str:
        """One line: the total and its parts, e.g. for an admission refusal."""
        if self.factor == "iterative":
            what = f"iterative path ({self.n2:,} trailing columns)"
        elif self.factor != "CHOLMOD":
            what = f"dense Schur block {self.n2:,} x {self.n2:,}"
        else:
            what = f"CHOLMOD nnz(L) {self.nnz_L:,}" + ("" if self.exact_L else " (guessed)")
        parts = [f"{what}: {self.factor_bytes / MB:,.0f} MB",
                 f"cross-products (q = {self.q:,}, nnz(Z'Z) = {self.nnz_ZtZ:,}): "
                 f"{self.crossproducts_bytes / MB:,.0f} MB"]  # fmt: skip
        if self.rows_bytes:
            parts.append(f"model rows: {self.rows_bytes / MB:,.0f} MB")
        parts.append(f"per-fit overhead: {FIT_OVERHEAD_BYTES / MB:,.0f} MB")
        return f"~{self.total_bytes / MB:,.0f} MB ({'; '.join(parts)})"


def estimate(data: ModelData, ordering: str = "auto") -> MemoryEstimate:
    """The memory of fitting ``data`` (see the module docstring)."""
    layout, cp = data.layout, data.cp
    tmap = ThetaMap.build(layout)
    M0 = generic_scaled(cp.ZtZ, tmap)
    return exact_or_iterative(
        layout, ordering, lambda: _exact_estimate(data, M0, tmap, ordering),
        lambda: _iterative_estimate(data, M0),
    )  # fmt: skip


def _exact_estimate(
    data: ModelData, M0: sp.csc_matrix, tmap: ThetaMap, ordering: str
) -> MemoryEstimate:
    """The exact path: the factor ``plan_factor`` chooses, sized without building it
    (but CHOLMOD's symbolic analysis, for nnz(L))."""
    layout, cp = data.layout, data.cp
    kind, _ = plan_factor(M0, cp.ZtZ, tmap, ordering)
    n1 = layout.p[0] * layout.nlevels[0]
    n2, exact = 0, True
    if kind != "cholmod":
        n2 = layout.q - n1
        nnz_L = int(n1 * (layout.p[0] + 1) // 2 + M0[n1:].nnz + n2 * (n2 + 1) // 2)
        factor_bytes = SCHUR_COPIES * 8 * n2 * n2 + 2 * SPARSE_BYTES_PER_NNZ * M0.nnz
        if kind == "mapped":  # its pair map G and G w
            G_nnz = MappedSchurFactor.map_size(cp.ZtZ, n1)
            factor_bytes += 2 * SPARSE_BYTES_PER_NNZ * G_nnz + 8 * n2 * n2
            if data.buffer is not None:  # GLMM gradient: level squares, ~2 G_nnz entries
                factor_bytes += 2 * SQUARE_BYTES_PER_NNZ * G_nnz + 4 * n2 * n2  # (+ lookup)
    else:
        factor = choose_factor(M0, cp.ZtZ, tmap, ordering)
        counted = symbolic_nnz_L(M0, factor._f.P())  # the permutation the fit will use
        exact = counted is not None
        nnz_L = counted if counted is not None else FILL_GUESS * M0.nnz
        factor_bytes = CHOLMOD_BYTES_PER_NNZ * nnz_L
    kind = "CHOLMOD" if kind == "cholmod" else "dense Schur complement"
    return MemoryEstimate(
        q=layout.q, nnz_ZtZ=2 * cp.ZtZ.nnz - layout.q, factor=kind, n2=n2, nnz_L=nnz_L,
        exact_L=exact,
        crossproducts_bytes=_crossproducts_bytes(cp, M0), factor_bytes=factor_bytes,
        rows_bytes=_rows_bytes(data),
    )  # fmt: skip


def _iterative_estimate(data: ModelData, M0: sp.csc_matrix) -> MemoryEstimate:
    """The iterative path (``iterative``): A21 and its transpose, the cluster blocks' pair
    map (guessed at PAIR_GUESS entries per non-zero of A21), and the Lanczos/PCG blocks:
    ITERATIVE_COLUMNS vectors of the trailing size and their products with A12."""
    layout, cp = data.layout, data.cp
    n1 = layout.nlevels[0] * layout.p[0]
    n2 = layout.q - n1
    nnz21 = int(M0[n1:, :n1].nnz)
    factor_bytes = (2 + PAIR_GUESS) * SPARSE_BYTES_PER_NNZ * nnz21 + 8 * ITERATIVE_COLUMNS * (
        ITERATIVE_COPIES * n2 + 2 * n1
    )
    return MemoryEstimate(
        q=layout.q, nnz_ZtZ=2 * cp.ZtZ.nnz - layout.q, factor="iterative", n2=n2,
        nnz_L=0, exact_L=False,
        crossproducts_bytes=_crossproducts_bytes(cp, M0), factor_bytes=int(factor_bytes),
        rows_bytes=_rows_bytes(data),
    )  # fmt: skip


def generic_scaled(ZtZ: sp.csc_matrix, tmap: ThetaMap) -> sp.csc_matrix:
    """Lambda'Z'WZ Lambda's lower triangle at a theta with no zeros: its pattern."""
    lam = tmap.Lambda(np.where(tmap.diagonal_mask(), 1.0, 0.5))
    full = (ZtZ + ZtZ.T - sp.diags(ZtZ.diagonal())).tocsc()
    return sp.tril(lam.T @ full @ lam, format="csc")


def _crossproducts_bytes(cp: CrossProducts, M0: sp.csc_matrix) -> int:
    dense = cp.ZtX.nbytes + cp.ZtY.nbytes + cp.XtX.nbytes + cp.XtY.nbytes
    # Z'WZ as kept, its symmetric copy, a scaled copy per theta, and R_ZX with c_u
    sparse = SPARSE_BYTES_PER_NNZ * (cp.ZtZ.nnz + 2 * M0.nnz)
    return int(3 * dense + sparse)


def _rows_bytes(data: ModelData) -> int:
    rows = data.buffer
    if rows is None:
        return 0
    width = int(sum(data.layout.p))  # Z's entries per row
    per_row = rows.X.shape[1] + 3 + width * (width + 3) // 2
    return int(ROW_BYTES_PER_VALUE * rows.n * per_row)


# ---------------------------------------------------------------- CHOLMOD's symbolic analysis


class _CholmodSparse(ctypes.Structure):
    """cholmod_sparse (cholmod_core.h), a layout unchanged since CHOLMOD 1."""

    _fields_ = [
        ("nrow", ctypes.c_size_t), ("ncol", ctypes.c_size_t), ("nzmax", ctypes.c_size_t),
        ("p", ctypes.c_void_p), ("i", ctypes.c_void_p), ("nz", ctypes.c_void_p),
        ("x", ctypes.c_void_p), ("z", ctypes.c_void_p), ("stype", ctypes.c_int),
        ("itype", ctypes.c_int), ("xtype", ctypes.c_int), ("dtype", ctypes.c_int),
        ("sorted", ctypes.c_int), ("packed", ctypes.c_int),
    ]  # fmt: skip


COMMON_BYTES = 1 << 16  # cholmod_common is a few KB; it is only passed by address
CHOLMOD_GIVEN = 1  # ordering: use the permutation given


@functools.cache
def _cholmod() -> ctypes.CDLL | None:
    for name in (ctypes.util.find_library("cholmod"), "libcholmod.so.3", "libcholmod.so.5"):
        try:
            lib = ctypes.CDLL(name) if name else None
        except OSError:
            continue
        if lib is not None and hasattr(lib, "cholmod_analyze_ordering"):
            return lib
    return None


def symbolic_nnz_L(M: sp.csc_matrix, perm: np.ndarray) -> int | None:
    """nnz of the Cholesky factor of P M P' (M: lower triangle; P: the fill-reducing
    permutation), from CHOLMOD's elimination tree and column counts: no numeric work,
    memory O(nnz(M)).  None when libcholmod cannot be loaded."""
    lib = _cholmod()
    if lib is None:
        return None
    n = M.shape[0]
    indptr = np.ascontiguousarray(M.indptr, dtype=np.int32)
    indices = np.ascontiguousarray(M.indices, dtype=np.int32)
    A = _CholmodSparse(
        n,
        n,
        len(indices),
        indptr.ctypes.data,
        indices.ctypes.data,
        None,
        None,
        None,
        -1,
        0,
        0,
        0,
        1,
        1,
    )  # lower, int, pattern, double, sorted, packed
    P = np.ascontiguousarray(perm, dtype=np.int32)
    parent, post, colcount, first, level = (np.empty(n, dtype=np.int32) for _ in range(5))
    common = ctypes.create_string_buffer(COMMON_BYTES)
    lib.cholmod_start(common)
    try:
        ok = lib.cholmod_analyze_ordering(
            ctypes.byref(A), CHOLMOD_GIVEN, _ptr(P), None, ctypes.c_size_t(0), _ptr(parent),
            _ptr(post), _ptr(colcount), _ptr(first), _ptr(level), common,
        )  # fmt: skip
    finally:
        lib.cholmod_finish(common)
    return int(colcount.sum(dtype=np.int64)) if ok else None


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)
