"""Row leverages of the PLS system through the Schur blocks of a ``MappedSchurFactor``.

For each model row i, with z_i its row of Z (z1 on the first term's level l, z2 on the
trailing columns) and M = Lambda'Z'WZ Lambda + I:

    h_i = z_i' Lambda M^-1 Lambda' z_i

The first term is scalar (theta_1), so M's leading block is D = diag(d), d = theta_1^2 a + 1,
and with the factor's Schur complement S of D and Gm = Lambda_2 S^-1 Lambda_2':

    h_i = theta_1^2 z1^2 / d_l + r' Gm r,      r = z2 - s_l z1 A21[:, l],   s_l = theta_1^2 / d_l

r lives on the trailing columns that meet level l (those of A21's column l), so

    r'Gm r = z2'Gm z2 - 2 z1 s_l sum_j z2_j GA_jl + z1^2 s_l^2 AGA_l,
    GA_jl = sum_k Gm_jk A21_kl,     AGA_l = sum_jk A21_jl Gm_jk A21_kl

where GA (on A21's pattern) and AGA are sums over the factor's pair map (the pairs of
trailing columns within each level) and z2'Gm z2 a sum over the pairs within each row:
O(pairs + rows) per theta once Gm is formed (one dense n2 x n2 congruence of S^-1).
With a single scalar term (no trailing columns) h_i = theta_1^2 z1^2 / d_l.  The Laplace
deviance's gradient (``laplace_gradient``) needs h: its log-determinant moves with the
working weights W, which move with the modes.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .factor import MappedSchurFactor, SchurFactor, pairs_within_levels


class RowLeverages:
    """h (one per model row) for the rows Z, from the factor's current state; the row
    structure (first-term level of each row, its trailing entries and their pairs) is
    analysed once.  A ``SchurFactor`` of a single scalar term (M = D) gives
    h_i = theta_1^2 z1^2 / d_l alone."""

    def __init__(self, Z: sp.csr_matrix, factor: SchurFactor) -> None:
        if factor.p1 != 1 or not (isinstance(factor, MappedSchurFactor) or factor.q == factor.n1):
            raise ValueError("row leverages need a scalar first term and a mapped factor")
        Z = Z.tocsr()
        Z.sort_indices()
        n1, n = factor.n1, Z.shape[0]
        first = Z.indices < n1
        row = np.repeat(np.arange(n), np.diff(Z.indptr))
        if np.bincount(row[first], minlength=n).max(initial=0) > 1:
            raise ValueError("a row has more than one entry in the first term")
        self.level = np.zeros(n, dtype=np.int64)
        self.z1 = np.zeros(n)
        self.level[row[first]] = Z.indices[first]
        self.z1[row[first]] = Z.data[first]
        self.n = n
        if isinstance(factor, MappedSchurFactor):
            self._trailing(factor, row[~first], Z.indices[~first] - n1, Z.data[~first])

    def _trailing(self, factor: MappedSchurFactor, row, cols, vals) -> None:
        """The rows' trailing entries: their entries of A21, and the pairs within rows
        with their positions in Gm (lower triangle) and products z2_j z2_k."""
        n, n2 = self.n, factor.n2
        self.entry_row = row
        self.z2 = vals
        used = (self.z1[self.entry_row] != 0) & (vals != 0)
        self.a21_entry = _entries_of(factor.A21, self.level[self.entry_row], cols, used)
        per_row = np.bincount(self.entry_row, minlength=n)
        count, p2 = pairs_within_levels(per_row)
        p1 = np.repeat(np.arange(len(cols)), count)
        self.pair_row = self.entry_row[p1]
        self.pair_pos = cols[p1] + cols[p2] * n2  # lower triangle: cols sorted within rows
        self.pair_value = np.where(p1 == p2, 1.0, 2.0) * vals[p1] * vals[p2]

    def __call__(self, factor: SchurFactor, theta1: float) -> np.ndarray:
        """h at the factor's current theta (first element ``theta1``) and weights."""
        if not isinstance(factor, MappedSchurFactor):  # M = D
            return (theta1 * self.z1) ** 2 * factor.Dinv[self.level, 0, 0]
        Gm = factor.congruent_inverse().reshape(-1, order="F")
        AGA, GA = _level_sums(factor, Gm)
        s = factor.theta1**2 / factor.d
        z1, lv = self.z1, self.level
        h = factor.theta1**2 * z1 * z1 / factor.d[lv]
        h += np.bincount(self.pair_row, self.pair_value * Gm[self.pair_pos], minlength=self.n)
        cross = np.bincount(self.entry_row, self.z2 * GA[self.a21_entry], minlength=self.n)
        h += z1 * s[lv] * (z1 * s[lv] * AGA[lv] - 2.0 * cross)
        return h


def _entries_of(
    A21: sp.csc_matrix, levels: np.ndarray, cols: np.ndarray, used: np.ndarray
) -> np.ndarray:
    """Index into A21.data of the entry (cols, levels) of each row entry; 0 where it is
    not ``used`` (the row has no first-term entry, or the entry is 0: a product with it
    is 0, and Z'Z's pattern need not hold it)."""
    n2 = A21.shape[0]
    keys = np.repeat(np.arange(A21.shape[1], dtype=np.int64), np.diff(A21.indptr)) * n2
    keys += A21.indices
    want = levels * n2 + cols
    pos = np.minimum(np.searchsorted(keys, want), max(len(keys) - 1, 0))
    if np.any(used) and (len(keys) == 0 or np.any(keys[pos[used]] != want[used])):
        raise ValueError("a row's trailing column is missing from Z'Z's pattern")
    return np.where(used, pos, 0)


def _level_sums(factor: MappedSchurFactor, Gm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AGA, GA): GA = Gm A21 on A21's pattern, by the factor's level squares, and from
    it AGA_l = A21[:, l]' Gm A21[:, l] = sum_j A21_jl GA_jl per level."""
    indptr, indices, src = factor.level_squares()
    a = factor.A21.data
    P = sp.csr_matrix((a[src], indices, indptr), shape=(len(a), len(factor.positions)))
    GA = P @ Gm[factor.positions]
    return np.bincount(factor.a21_levels, a * GA, minlength=factor.n1), GA
