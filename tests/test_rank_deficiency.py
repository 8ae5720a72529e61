"""Rank-deficient fixed effects: aliased columns are dropped with lme4's message."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sparsemm import solver


def data() -> pa.Table:
    rng = np.random.default_rng(5)
    n = 300
    g = rng.integers(0, 15, n)
    x = rng.normal(size=n)
    y = 2 + x + rng.normal(size=15)[g] + rng.normal(size=n)
    return pa.table({"y": y, "x": x, "x2": 2 * x - 1, "g": [f"g{i}" for i in g]})


def test_aliased_column_dropped_with_message() -> None:
    table = data()
    full = solver.fit("y ~ x + x2 + (1 | g)", table).result
    reduced = solver.fit("y ~ x + (1 | g)", table).result
    assert [fe.term for fe in full.fixed_effects] == ["(Intercept)", "x"]
    assert any("rank deficient so dropping 1 column / coefficient (x2)" in m for m in full.messages)
    np.testing.assert_allclose(
        [fe.estimate for fe in full.fixed_effects],
        [fe.estimate for fe in reduced.fixed_effects],
        rtol=1e-8,
    )
    assert abs(full.reml_criterion - reduced.reml_criterion) < 1e-8 * abs(reduced.reml_criterion)
