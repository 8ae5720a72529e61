"""Conditional variances of the random effects, per level, without a dense inverse.

    Var(b | y) = sigma^2 Lambda (Lambda' Z'WZ Lambda + I)^-1 Lambda'       (lme4's condVar)

The diagonal p_k x p_k blocks B of M^-1 = (Lambda'Z'WZ Lambda + I)^-1 come from the
factor, a chunk of levels at a time (``level_blocks``: sparse solves with CHOLMOD,
or D_l^-1 + (B D^-1)_l' S^-1 (B D^-1)_l with the Schur factor).  Then
Var(b_level | y) / sigma^2 = T_k B T_k'; its diagonal is returned.
"""

from __future__ import annotations

import numpy as np

from .pls import PLS, PLSSolution, ThetaMap
from .pls_iterative import IterativePLS

CHUNK_COLUMNS = 1024


def conditional_variances(pls: PLS | IterativePLS, tmap: ThetaMap, sol: PLSSolution) -> np.ndarray:
    """diag(Lambda M^-1 Lambda') in Z's column order (multiply by sigma^2)."""
    layout = tmap.layout
    out = np.empty(layout.q)
    for T, off, p, nl in zip(tmap.blocks(sol.theta), layout.offsets, layout.p, layout.nlevels):
        step = max(1, CHUNK_COLUMNS // p)
        for l0 in range(0, nl, step):
            levels = np.arange(l0, min(nl, l0 + step))
            B = pls.factor.level_blocks(off, p, levels)
            TB = np.einsum("ja,lab->ljb", T, B)
            diag = np.einsum("ljb,jb->lj", TB, T)
            out[off + l0 * p : off + (l0 + len(levels)) * p] = diag.ravel()
    return out
