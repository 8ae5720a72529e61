"""Cross-products of the buffered model rows under per-iteration weights (PIRLS).

With W = diag(w) and the working response z, one pass gives

    Z'WZ, Z'WX, Z'Wz, X'WX, X'Wz, z'Wz

where Z'WZ keeps the pattern of Z'Z: each row's products z_a z_b (a <= b among its
non-zeros) are precomputed into a sparse S (one row per stored entry of Z'Z, one column
per model row), so that (Z'WZ).data = S w, one sparse product per pass.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .crossprod import CrossProducts, z_matrix
from .model import ModelData


class WeightedPass:
    """Cross-products with per-iteration weights over the buffered rows.

    Z'WZ keeps the pattern of Z'Z: each row's products z_a z_b (a <= b among its
    non-zeros) are precomputed into a sparse S (one row per stored entry of Z'Z, one
    column per model row), so that a pass is one product (Z'WZ).data = S w."""

    def __init__(self, data: ModelData) -> None:
        rows = data.buffer
        assert rows is not None
        self.X = rows.X[:, data.kept]
        self.Z = z_matrix(rows, data.layout).tocsr()
        self.Zt = self.Z.T.tocsr()
        self.counts = data.cp.level_counts
        pattern = data.cp.ZtZ.copy()
        pattern.sort_indices()
        self.indices, self.indptr, self.q = pattern.indices, pattern.indptr, pattern.shape[0]
        self.S = self._pairs(pattern)

    def _pairs(self, pattern: sp.csc_matrix) -> sp.csr_matrix:
        Z, q = self.Z, self.q
        width = int(np.diff(Z.indptr).max())
        cols = Z.indices.reshape(-1, width).astype(np.int64)
        vals = Z.data.reshape(-1, width)
        a, b = np.triu_indices(width)
        lo, hi = np.minimum(cols[:, a], cols[:, b]), np.maximum(cols[:, a], cols[:, b])
        col_of = np.repeat(np.arange(q, dtype=np.int64), np.diff(pattern.indptr))
        keys = col_of * q + pattern.indices
        pos = np.searchsorted(keys, lo * q + hi)
        n, k = pos.shape
        byrow = sp.csr_matrix(
            ((vals[:, a] * vals[:, b]).ravel(), pos.ravel(), np.arange(0, n * k + 1, k)),
            shape=(n, len(keys)),
        )
        return byrow.T.tocsr()

    def __call__(self, w: np.ndarray, z: np.ndarray, X: np.ndarray) -> CrossProducts:
        WX = X * w[:, None]
        return CrossProducts(
            ZtZ=sp.csc_matrix((self.S @ w, self.indices, self.indptr), shape=(self.q, self.q)),
            ZtX=np.asarray(self.Zt @ WX),
            ZtY=np.asarray(self.Zt @ (w * z)),
            XtX=X.T @ WX,
            XtY=WX.T @ z,
            yty=float(z @ (w * z)),
            n=len(z),
            sum_log_w=0.0,
            level_counts=self.counts,
            x_min=np.zeros(0),
            x_max=np.zeros(0),
        )
