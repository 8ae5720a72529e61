"""Invariances: the same estimates whatever the source, batch size, row order, labels."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from sparsemm import solver
from sparsemm.solver.lmm import LinearMixedModel

FORMULA = "y ~ x + f + (1 + x | g) + (1 | h)"


def synthetic(n: int = 600, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 30, n)
    h = rng.integers(0, 12, n)
    x = rng.normal(size=n)
    f = rng.choice(["lo", "mid", "hi"], n)
    bg = rng.normal(scale=0.8, size=(30, 2))
    bh = rng.normal(scale=0.5, size=12)
    y = 1 + 0.5 * x + (f == "hi") + bg[g, 0] + bg[g, 1] * x + bh[h] + rng.normal(size=n)
    return pa.table({"y": y, "x": x, "f": f, "g": [f"G{i:02d}" for i in g], "h": h})


def estimates(data, batch_rows: int = 1 << 20, weights: str | None = None) -> np.ndarray:
    md = solver.prepare(FORMULA, data, weights=weights, batch_rows=batch_rows)
    res = LinearMixedModel(md).fit().result
    return np.array([fe.estimate for fe in res.fixed_effects] + res.theta + [res.sigma])


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return synthetic()


@pytest.fixture(scope="module")
def reference(table: pa.Table) -> np.ndarray:
    return estimates(table)


def test_sources_agree(table: pa.Table, reference: np.ndarray, tmp_path) -> None:
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=100)
    pcsv.write_csv(table, tmp_path / "d.csv")
    with ipc.new_stream(tmp_path / "d.arrows", table.schema) as w:
        w.write_table(table, max_chunksize=77)
    con = duckdb.connect(str(tmp_path / "d.duckdb"))
    con.register("tab", table)
    con.execute("CREATE TABLE encounters AS SELECT * FROM tab")
    con.close()
    sources = [
        str(tmp_path / "d.parquet"),
        str(tmp_path / "*.parquet"),
        str(tmp_path / "d.csv"),
        str(tmp_path / "d.arrows"),
        f"duckdb:{tmp_path / 'd.duckdb'}:encounters",
        f"sql:SELECT * FROM read_parquet('{tmp_path / 'd.parquet'}')",
    ]
    for src in sources:
        np.testing.assert_allclose(estimates(src), reference, rtol=1e-8, err_msg=src)


def test_batch_size_does_not_matter(table: pa.Table, reference: np.ndarray) -> None:
    np.testing.assert_allclose(estimates(table, batch_rows=37), reference, rtol=1e-8)


def test_row_order_does_not_matter(table: pa.Table, reference: np.ndarray) -> None:
    perm = np.random.default_rng(1).permutation(table.num_rows)
    np.testing.assert_allclose(estimates(table.take(perm)), reference, rtol=1e-8)


def test_group_labels_do_not_matter(table: pa.Table, reference: np.ndarray) -> None:
    relabel = pa.array([f"Z{s[::-1]}" for s in table.column("g").to_pylist()])
    other = table.set_column(table.schema.get_field_index("g"), "g", relabel)
    np.testing.assert_allclose(estimates(other), reference, rtol=1e-8)


def test_unit_weights_equal_no_weights(table: pa.Table, reference: np.ndarray) -> None:
    weighted = table.append_column("w", pa.array(np.ones(table.num_rows)))
    np.testing.assert_allclose(estimates(weighted, weights="w"), reference, rtol=1e-8)


def test_missing_rows_are_dropped_and_counted(table: pa.Table, reference: np.ndarray) -> None:
    extra = pa.table({"y": [np.nan, 1.0], "x": [0.1, None], "f": ["lo", "lo"],
                      "g": ["G01", "G02"], "h": [1, 2]})  # fmt: skip
    both = pa.concat_tables([table, extra.cast(table.schema)])
    md = solver.prepare(FORMULA, both)
    assert md.cp.n == table.num_rows
    assert any("2 rows dropped" in m and "x: 1" in m and "y: 1" in m for m in md.messages)
    np.testing.assert_allclose(estimates(both), reference, rtol=1e-8)


def test_factor_levels_follow_r(table: pa.Table) -> None:
    res = LinearMixedModel(solver.prepare(FORMULA, table)).fit().result
    assert [fe.term for fe in res.fixed_effects] == ["(Intercept)", "x", "flo", "fmid"]
    cat = pa.DictionaryArray.from_arrays(
        pa.array(
            [["mid", "lo", "hi"].index(v) for v in table.column("f").to_pylist()], pa.int8()
        ),  # fmt: skip
        pa.array(["mid", "lo", "hi"]),
    )
    ordered = table.set_column(2, "f", cat)
    res2 = LinearMixedModel(solver.prepare(FORMULA, ordered)).fit().result
    assert [fe.term for fe in res2.fixed_effects] == ["(Intercept)", "x", "flo", "fhi"]
