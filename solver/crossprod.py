"""Cross-products of the model rows, pass 2: sums over rows, batch by batch.

    ZtZ = Z'WZ  (q x q, sparse, lower triangle kept)    ZtX = Z'WX (q x p)   ZtY = Z'Wy
    XtX = X'WX  (p x p)                                  XtY = X'Wy           yty = y'Wy

together with n, sum(log w) and the number of rows per level.  Each batch gives
partial sums (``partial``) and partial sums add (``combine``), so the pass runs
unchanged per partition of a distributed table.  Memory is O(nnz(Z'Z) + q p + p^2),
independent of the number of rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .design import ModelRows


@dataclass(frozen=True)
class TermLayout:
    """Where term k's columns sit in Z: ``offset + level * p + j``."""

    offsets: tuple[int, ...]
    p: tuple[int, ...]
    nlevels: tuple[int, ...]

    @property
    def q(self) -> int:
        return int(sum(p * n for p, n in zip(self.p, self.nlevels)))


@dataclass(frozen=True)
class CrossProducts:
    """Sums over rows that are all the PLS core needs."""

    ZtZ: sp.csc_matrix
    ZtX: np.ndarray
    ZtY: np.ndarray
    XtX: np.ndarray
    XtY: np.ndarray
    yty: float
    n: int
    sum_log_w: float
    level_counts: tuple[np.ndarray, ...]
    x_min: np.ndarray  # column ranges of [X, y], to name a term with no variation
    x_max: np.ndarray


def z_matrix(rows: ModelRows, layout: TermLayout) -> sp.csr_matrix:
    """The rows' block of Z, built from (row, column, value) triples."""
    n = rows.n
    width = sum(layout.p)
    cols = np.empty((n, width), dtype=np.int64)
    vals = np.empty((n, width), dtype=np.float64)
    at = 0
    for k, (codes, values) in enumerate(zip(rows.codes, rows.values)):
        p = layout.p[k]
        base = layout.offsets[k] + codes * p
        cols[:, at : at + p] = base[:, None] + np.arange(p)[None, :]
        vals[:, at : at + p] = values
        at += p
    indptr = np.arange(0, n * width + 1, width, dtype=np.int64)
    return sp.csr_matrix((vals.ravel(), cols.ravel(), indptr), shape=(n, layout.q))


def partial(rows: ModelRows, layout: TermLayout) -> CrossProducts:
    """Cross-products of one batch."""
    Z = z_matrix(rows, layout)
    w = np.ones(rows.n) if rows.w is None else rows.w
    WX = rows.X * w[:, None]
    Wy = rows.y * w
    ZtW = Z.T.tocsr().multiply(w[None, :]).tocsr() if rows.w is not None else Z.T.tocsr()
    ZtZ = sp.tril(ZtW @ Z, format="csc")
    counts = tuple(np.bincount(c, minlength=n) for c, n in zip(rows.codes, layout.nlevels))
    with np.errstate(divide="ignore"):
        slw = float(np.sum(np.log(w))) if rows.w is not None else 0.0
    XY = np.vstack([rows.X.T, rows.y])  # a row per column of [X, y]: contiguous min, max
    return CrossProducts(
        ZtZ=ZtZ,
        ZtX=np.asarray(Z.T @ WX),
        ZtY=np.asarray(Z.T @ Wy),
        XtX=rows.X.T @ WX,
        XtY=rows.X.T @ Wy,
        yty=float(rows.y @ Wy),
        n=rows.n,
        sum_log_w=slw,
        level_counts=counts,
        x_min=XY.min(axis=1),
        x_max=XY.max(axis=1),
    )


def combine(a: CrossProducts, b: CrossProducts) -> CrossProducts:
    """Sum of two partial cross-products (associative, commutative)."""
    return CrossProducts(
        ZtZ=(a.ZtZ + b.ZtZ).tocsc(),
        ZtX=a.ZtX + b.ZtX,
        ZtY=a.ZtY + b.ZtY,
        XtX=a.XtX + b.XtX,
        XtY=a.XtY + b.XtY,
        yty=a.yty + b.yty,
        n=a.n + b.n,
        sum_log_w=a.sum_log_w + b.sum_log_w,
        level_counts=tuple(x + y for x, y in zip(a.level_counts, b.level_counts)),
        x_min=np.minimum(a.x_min, b.x_min),
        x_max=np.maximum(a.x_max, b.x_max),
    )


def accumulate(batches: Iterable[ModelRows], layout: TermLayout) -> CrossProducts:
    """Pass 2: fold ``partial`` over the batches with ``combine``."""
    total: CrossProducts | None = None
    for rows in batches:
        part = partial(rows, layout)
        total = part if total is None else combine(total, part)
    if total is None:
        raise ValueError("no rows")
    return total
