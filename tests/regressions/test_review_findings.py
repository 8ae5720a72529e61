"""Regressions found in review (one small reproduction each)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sparsemm import solver
from sparsemm.cli import main
from sparsemm.solver.lmm import LinearMixedModel
from sparsemm.solver.optimize import Control


def crossed(n: int = 400, seed: int = 2) -> pa.Table:
    rng = np.random.default_rng(seed)
    a, b, g = rng.integers(0, 8, n), rng.integers(0, 5, n), rng.integers(0, 20, n)
    x = rng.normal(size=n)
    ab = rng.normal(scale=0.4, size=(8, 5))
    y = 1 + 0.5 * x + ab[a, b] + rng.normal(scale=0.3, size=20)[g] * x + rng.normal(size=n)
    return pa.table({"y": y, "x": x, "a": a, "b": b, "g": [f"g{i}" for i in g]})


@pytest.mark.parametrize(
    "formula",
    ["y ~ x + (1 | a:b)", "y ~ x + (x - 1 | g)", "y ~ x + (x | g) + (1 | a)"],
)
def test_gradient_path_does_not_stall_on_the_boundary(formula: str) -> None:
    """L-BFGS-B stopped at theta = 0 (a stationary point); BOBYQA alone did not."""
    data = solver.prepare(formula, crossed())
    with_grad = LinearMixedModel(data).fit().result
    without = LinearMixedModel(data).fit(Control(use_gradient=False)).result
    assert with_grad.reml_criterion <= without.reml_criterion + 1e-6
    assert abs(with_grad.reml_criterion - without.reml_criterion) < 1e-5


def test_double_bar_without_intercept() -> None:
    data = solver.prepare("y ~ x + (x - 1 || g)", crossed())
    assert [t.names for t in data.design.terms] == [("x",)]


def test_interaction_levels_first_factor_slowest() -> None:
    data = solver.prepare("y ~ x + (1 | a:b)", crossed())
    labels = data.design.terms[0].labels
    assert labels[:3] == ("0:0", "0:1", "0:2")


def test_r_style_na_in_csv_is_missing(tmp_path) -> None:
    path = tmp_path / "na.csv"
    rows = ["y,x,g"] + [f"{i % 7 + 0.5 * i},{i % 5},g{i % 6}" for i in range(60)]
    rows[5] = "NA,1,g1"
    path.write_text("\n".join(rows) + "\n")
    data = solver.prepare("y ~ x + (1 | g)", str(path))
    assert data.cp.n == 59
    assert data.fixed_names == ("(Intercept)", "x")


@pytest.mark.parametrize(
    ("formula", "fragment"),
    [
        ("y ~ log(x) + (1 | g)", "'log(x)' is not finite"),
        ("y ~ scale(x) + (1 | g)", "'scale()' needs statistics of the whole column"),
        ("y ~ factor(a) + (1 | g)", "factor() is not supported"),
    ],
)
def test_bad_transforms_exit_2(capsys, tmp_path, formula: str, fragment: str) -> None:
    path = tmp_path / "d.parquet"
    import pyarrow.parquet as pq

    pq.write_table(crossed(), path)
    assert main(["fit", "--quiet", "--data", str(path), "--formula", formula]) == 2
    assert fragment in capsys.readouterr().err


def test_no_fixed_effects_with_vector_term() -> None:
    res = solver.fit("y ~ 0 + (x | g)", crossed()).result
    assert res.fixed_effects == [] and np.isfinite(res.reml_criterion)


def test_unwritable_output_exits_2(capsys, tmp_path) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(crossed(), path)
    args = ["fit", "--quiet", "--data", str(path), "--formula", "y ~ x + (1 | g)"]
    assert main([*args, "--ranef", str(tmp_path / "no" / "such" / "dir.parquet")]) == 2
    assert "sparsemm: error:" in capsys.readouterr().err


def test_exact_factor_too_large_is_refused_clearly(monkeypatch) -> None:
    """A crossed design whose trailing block fills in beyond the budget: the exact PLS
    refuses it with a clear error naming the size (instead of hours of factorization or
    an out-of-memory kill), and the model takes the iterative path instead."""
    from sparsemm.solver import pls
    from sparsemm.solver.pls_iterative import IterativePLS

    monkeypatch.setattr(pls, "MAX_DENSE_SCHUR", 5)
    monkeypatch.setattr(pls, "MAX_DENSE_BYTES", 100)
    data = solver.prepare("y ~ x + (1 | g) + (1 | a)", crossed())
    with pytest.raises(pls.FactorTooLarge, match="8 x 8 block"):
        pls.PLS(data.cp, pls.ThetaMap.build(data.layout))
    assert isinstance(LinearMixedModel(data).pls, IterativePLS)


def test_malformed_sql_source_exits_2(capsys) -> None:
    args = ["fit", "--quiet", "--data", "sql:SELECT * FROM t WHERE", "--formula", "y ~ x + (1|g)"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparsemm: error: cannot parse the sql: source") and err.count("\n") == 1


def test_cbind_rows_without_trials_have_weight_zero() -> None:
    table = crossed()
    n = table.num_rows
    rng = np.random.default_rng(4)
    s = rng.integers(0, 5, n)
    f = rng.integers(0, 5, n)
    s[:10] = f[:10] = 0
    both = table.append_column("s", pa.array(s)).append_column("f", pa.array(f))
    rest = both.slice(10)
    full = solver.prepare("cbind(s, f) ~ x + (1 | g)", both, family="binomial")
    kept = solver.prepare("cbind(s, f) ~ x + (1 | g)", rest, family="binomial")
    fam = solver.family("binomial")
    a = solver.GeneralizedLinearMixedModel(full, fam).fit().result
    b = solver.GeneralizedLinearMixedModel(kept, fam).fit().result
    assert abs(a.loglik - b.loglik) < 1e-6 * abs(b.loglik)
