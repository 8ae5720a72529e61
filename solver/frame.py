"""The model frame, pass 1: which columns the model uses, rows with missing values,
and the levels of every factor.

A row is used when none of the model's columns is missing (null, or NaN in a
float column), as R's ``na.omit``; dropped rows are counted per column.  Levels
follow R so that results compare line by line with lme4:

    string column        distinct values sorted by code point (factor() in the C locale)
    dictionary column    its dictionary order (pandas Categorical, DuckDB ENUM)
    integer/float column numeric order          (when used as a grouping factor)
    boolean column       FALSE, TRUE
    a:b                  observed pairs, first factor varying slowest, "a_lev:b_lev"

Unused levels are dropped.  The pass is "batch -> partial levels" plus a
combine, so it can run per partition.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import DataError


@dataclass(frozen=True)
class Levels:
    """The levels of one atomic factor column: values (for lookup) and labels."""

    values: pa.Array
    labels: tuple[str, ...]

    def codes(self, column: pa.Array) -> np.ndarray:
        """0-based level index of each entry of ``column`` (all present)."""
        if pa.types.is_dictionary(column.type):
            dict_codes = pc.index_in(column.dictionary, value_set=self.values)
            idx = pc.take(dict_codes, column.indices)
        else:
            idx = pc.index_in(column, value_set=self.values)
        return np.asarray(idx.to_numpy(zero_copy_only=False), dtype=np.int64)


@dataclass(frozen=True)
class InteractionLevels:
    """Levels of ``a:b``: observed combinations keyed by mixed-radix component codes."""

    components: tuple[Levels, ...]
    keys: np.ndarray  # sorted int64 keys: (code_a * n_b + code_b) * n_c + ...
    labels: tuple[str, ...]

    def codes_from(self, component_codes: list[np.ndarray]) -> np.ndarray:
        return np.searchsorted(self.keys, _mixed_key(component_codes, self.components))


def _mixed_key(codes: list[np.ndarray], comps: tuple[Levels, ...]) -> np.ndarray:
    """code_a * n_b * n_c + code_b * n_c + code_c: the first factor varies slowest."""
    key = np.zeros(len(codes[0]), dtype=np.int64)
    for c, lev in zip(codes, comps):
        key = key * len(lev.labels) + c
    return key


def usable_mask(batch: pa.RecordBatch) -> np.ndarray:
    """True for rows with no missing value in any column of ``batch``."""
    keep = np.ones(batch.num_rows, dtype=bool)
    for col in batch.columns:
        keep &= ~_missing(col)
    return keep


def _missing(col: pa.Array) -> np.ndarray:
    miss = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_floating(col.type):
        miss |= np.isnan(col.fill_null(0).to_numpy(zero_copy_only=False))
    return miss


def clean(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` without the rows that have a missing value."""
    keep = usable_mask(batch)
    return batch if keep.all() else batch.filter(pa.array(keep))


@dataclass
class _LevelAccumulator:
    """Partial levels of one column over the batches seen so far."""

    chunks: list[pa.Array] = field(default_factory=list)
    dict_rank: dict = field(default_factory=dict)

    def add(self, column: pa.Array) -> None:
        if pa.types.is_dictionary(column.type):
            for value in column.dictionary.to_pylist():
                self.dict_rank.setdefault(value, len(self.dict_rank))
            self.chunks.append(column.dictionary.take(pc.unique(column.indices)))
        else:
            self.chunks.append(pc.unique(column))

    def finish(self, name: str) -> Levels:
        if not self.chunks:
            raise DataError("no rows left after dropping missing values", name)
        values = pc.unique(pa.concat_arrays(self.chunks))
        if self.dict_rank:
            ranks = pa.array([self.dict_rank[v] for v in values.to_pylist()])
            values = values.take(pc.sort_indices(ranks))
        else:
            values = values.take(pc.sort_indices(values))
        return Levels(values, tuple(_label(v) for v in values.to_pylist()))


def _label(value: object) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class FrameInfo:
    """What pass 1 learned: row counts, missing values per column, factor levels."""

    rows_read: int
    rows_used: int
    missing: dict[str, int]
    levels: dict[str, Levels]
    groups: dict[str, InteractionLevels]

    def dropped_message(self) -> str | None:
        dropped = self.rows_read - self.rows_used
        if not dropped:
            return None
        per_col = ", ".join(f"{c}: {n}" for c, n in self.missing.items() if n)
        return f"{dropped} rows dropped for missing values ({per_col})"


def scan(
    batches: Iterable[pa.RecordBatch],
    factor_columns: list[str],
    interactions: list[tuple[str, ...]],
) -> tuple[FrameInfo, pa.RecordBatch]:
    """Pass 1 over the data: counts, missing values, levels of factors and ``a:b``; and
    its first clean rows (at most SAMPLE_ROWS), on which the column specs are built."""
    acc = {c: _LevelAccumulator() for c in factor_columns}
    pairs: dict[tuple[str, ...], list[pa.Table]] = {g: [] for g in interactions}
    missing: dict[str, int] = {}
    rows_read = rows_used = 0
    sample: pa.RecordBatch | None = None
    for raw in batches:
        rows_read += raw.num_rows
        for name, col in zip(raw.schema.names, raw.columns):
            missing[name] = missing.get(name, 0) + int(_missing(col).sum())
        batch = clean(raw)
        rows_used += batch.num_rows
        if sample is None and batch.num_rows:
            sample = batch.slice(0, SAMPLE_ROWS)
        for c in factor_columns:
            acc[c].add(batch.column(c))
        for g in interactions:
            pairs[g].append(_observed_combinations(batch, g))
    if sample is None:
        raise DataError("no rows left after dropping rows with missing values", "data")
    levels = {c: acc[c].finish(c) for c in factor_columns}
    groups = {":".join(g): _interaction_levels(g, pairs[g], levels) for g in interactions}
    # a copy (take): a slice would keep all of the first batch alive through pass 2
    sample = sample.take(pa.array(np.arange(sample.num_rows)))
    return FrameInfo(rows_read, rows_used, missing, levels, groups), sample


SAMPLE_ROWS = 65536


def _observed_combinations(batch: pa.RecordBatch, cols: tuple[str, ...]) -> pa.Table:
    table = pa.table({c: _decoded(batch.column(c)) for c in cols})
    return table.group_by(list(cols)).aggregate([])


def _decoded(col: pa.Array) -> pa.Array:
    return col.dictionary_decode() if pa.types.is_dictionary(col.type) else col


def _interaction_levels(
    cols: tuple[str, ...], parts: list[pa.Table], levels: dict[str, Levels]
) -> InteractionLevels:
    combos = pa.concat_tables(parts).group_by(list(cols)).aggregate([])
    comps = tuple(levels[c] for c in cols)
    codes = [lev.codes(combos.column(c).combine_chunks()) for c, lev in zip(cols, comps)]
    keys = np.unique(_mixed_key(codes, comps))
    labels = tuple(_combo_labels(keys, comps))
    return InteractionLevels(comps, keys, labels)


def _combo_labels(keys: np.ndarray, comps: tuple[Levels, ...]) -> Iterator[str]:
    for key in keys.tolist():
        parts = []
        for lev in reversed(comps):
            key, code = divmod(key, len(lev.labels))
            parts.append(lev.labels[code])
        yield ":".join(reversed(parts))
