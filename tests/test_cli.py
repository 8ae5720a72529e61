"""The ``sparsemm fit`` command: JSON contract, text summary, and exit 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparsemm.cli import main

DATA = Path(__file__).parent / "data"
SLEEP = str(DATA / "sleepstudy.parquet")
FORMULA = "Reaction ~ Days + (Days | Subject)"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["fit", "--quiet", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_contract(capsys) -> None:
    code, out, _ = run(capsys, "--data", SLEEP, "--formula", FORMULA, "--format", "json")
    assert code == 0
    res = json.loads(out)
    keys = {"formula", "family", "link", "method", "nobs", "ngroups", "fixed_effects",
            "variance_components", "theta", "sigma", "loglik", "aic", "bic", "deviance",
            "reml_criterion", "converged", "singular", "messages", "timings"}  # fmt: skip
    assert keys <= set(res)
    assert res["method"] == "REML" and res["nobs"] == 180 and res["ngroups"] == {"Subject": 18}
    assert abs(res["reml_criterion"] - 1743.6282719) < 1e-5
    assert [r["group"] for r in res["variance_components"]][-1] == "Residual"
    timings = {"read_s", "fit_s", "total_s", "evaluations", "first_evaluation_s", "evaluation_s"}
    assert set(res["timings"]) == timings
    assert res["timings"]["evaluations"] > res["diagnostics"]["evaluations"]  # + the checks'


def test_text_summary_and_outputs(capsys, tmp_path) -> None:
    ranef, fitted = tmp_path / "re.parquet", tmp_path / "fit.parquet"
    source = f"sql:SELECT * FROM read_parquet('{SLEEP}')"
    outputs = ["--ranef", str(ranef), "--fitted", str(fitted)]
    code, out, _ = run(capsys, "--data", source, "--formula", FORMULA, *outputs)
    assert code == 0
    for fragment in ["REML criterion at convergence: 1743.6", "Scaled residuals",
                     "Random effects:", "Subject", "Residual", "Number of obs: 180",
                     "Fixed effects:", "t value"]:  # fmt: skip
        assert fragment in out
    re = pq.read_table(ranef)
    assert re.column_names == ["group", "level", "term", "condval", "condsd"]
    assert re.num_rows == 36
    assert pq.read_table(fitted).num_rows == 180


def test_ml_flag(capsys) -> None:
    code, out, _ = run(capsys, "--data", SLEEP, "--formula", FORMULA, "--ml", "--format", "json")
    res = json.loads(out)
    assert code == 0 and res["method"] == "ML" and res["reml_criterion"] is None
    assert abs(res["deviance"] - 1751.9393444) < 1e-5


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory) -> str:
    rng = np.random.default_rng(3)
    n = 40
    table = pa.table({
        "y": rng.normal(size=n), "x": rng.normal(size=n), "const": np.full(n, 2.0),
        "name": [f"s{i % 5}" for i in range(n)], "g": [f"g{i % 4}" for i in range(n)],
        "one": ["a"] * n, "row": [f"r{i}" for i in range(n)],
        "allnull": pa.array([None] * n, pa.float64()),
    })  # fmt: skip
    path = tmp_path_factory.mktemp("odd") / "odd.parquet"
    pq.write_table(table, path)
    return str(path)


@pytest.mark.parametrize(
    ("formula", "fragment"),
    [
        ("y ~ nosuch + (1 | g)", "unknown column 'nosuch'"),
        ("name ~ x + (1 | g)", "response 'name' is not numeric"),
        ("y ~ const + (1 | g)", "term 'const' has no variation"),
        ("y ~ x + (1 | one)", "grouping factor 'one' has only 1 level"),
        ("y ~ x + (1 | row)", "number of levels must be less than the number of observations"),
        ("y ~ x + (1 + x | row)", "must be less than the number of observations"),
        ("y ~ x + (1 | g", "unclosed '('"),
        ("y ~ x +* z + (1 | g)", "cannot parse formula"),
        ("y ~ allnull + (1 | g)", "no rows left after dropping"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    capsys, odd_data: str, formula: str, fragment: str
) -> None:
    code, out, err = run(capsys, "--data", odd_data, "--formula", formula)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("sparsemm: error: ")
    assert fragment in err


def test_missing_source_and_bad_family_response(capsys) -> None:
    code, _, err = run(capsys, "--data", "/no/such.parquet", "--formula", FORMULA)
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "--data", SLEEP, "--formula", FORMULA, "--family", "poisson")
    assert code == 2 and "poisson response 'Reaction' must be whole counts" in err
