"""Conditional variances of the random effects, per level, without a dense inverse.

    Var(b | y) = sigma^2 Lambda (Lambda' Z'WZ Lambda + I)^-1 Lambda'       (lme4's condVar)

With M = Lambda'Z'WZ Lambda + I = P' L L' P, the diagonal block of M^-1 for the
p_k columns E of one level is  B = (L^-1 P E)' (L^-1 P E):  sparse solves with a
sparse right-hand side, a chunk of levels at a time, so only L's column paths are
touched.  Then  Var(b_level | y) / sigma^2 = T_k B T_k'; its diagonal is returned.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .pls import PLS, PLSSolution, ThetaMap

CHUNK_COLUMNS = 1024


def conditional_variances(pls: PLS, tmap: ThetaMap, sol: PLSSolution) -> np.ndarray:
    """diag(Lambda M^-1 Lambda') in Z's column order (multiply by sigma^2)."""
    layout = tmap.layout
    out = np.empty(layout.q)
    for T, off, p, nl in zip(tmap.blocks(sol.theta), layout.offsets, layout.p, layout.nlevels):
        step = max(1, CHUNK_COLUMNS // p)
        for l0 in range(0, nl, step):
            levels = np.arange(l0, min(nl, l0 + step))
            B = _level_blocks(pls, off, p, levels)
            TB = np.einsum("ja,lab->ljb", T, B)
            diag = np.einsum("ljb,jb->lj", TB, T)
            out[off + l0 * p : off + (l0 + len(levels)) * p] = diag.ravel()
    return out


def _level_blocks(pls: PLS, off: int, p: int, levels: np.ndarray) -> np.ndarray:
    """B[l] = diagonal p x p block of M^-1 for each level l (shape: levels x p x p)."""
    q = pls.cp.ZtZ.shape[0]
    cols = off + (levels[:, None] * p + np.arange(p)[None, :]).ravel()
    m = len(cols)
    E = sp.csc_matrix((np.ones(m), (cols, np.arange(m))), shape=(q, m))
    X = pls.factor.solve_L(pls.factor.apply_P(E), use_LDLt_decomposition=False)
    X = sp.csc_matrix(X)
    B = np.empty((len(levels), p, p))
    for a in range(p):
        for c in range(a, p):
            prod = X[:, a::p].multiply(X[:, c::p])
            vals = np.asarray(prod.sum(axis=0)).ravel()
            B[:, a, c] = B[:, c, a] = vals
    return B
