"""``sparsemm predict`` and ``sparsemm fit --satterthwaite --icc`` (sparsemm/cli_inference.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sparsemm.cli import main

DATA = Path(__file__).parent / "data"
SLEEP = str(DATA / "sleepstudy.parquet")
NEW = str(DATA / "sleepstudy_new.parquet")
FORMULA = "Reaction ~ Days + (Days | Subject)"
GOLDEN = {
    c["name"]: c
    for c in json.loads((Path(__file__).parent / "golden" / "predict_golden.json").read_text())
}


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_predict_writes_one_row_per_new_row(capsys, tmp_path: Path) -> None:
    out = tmp_path / "pred.parquet"
    code, stdout, err = run(
        capsys, "predict", "--data", SLEEP, "--formula", FORMULA, "--newdata", NEW,
        "--se-fit", "--out", str(out),
    )  # fmt: skip
    assert code == 0 and err == ""
    assert stdout == (f"10 predictions (1 null for missing values) from a REML fit to 180 "
                      f"rows written to {out}\n")  # fmt: skip
    table = pq.read_table(out)
    assert table.column_names == ["fit", "se_fit"]
    expected = GOLDEN["predict_sleepstudy"]
    fit = np.array([np.nan if v is None else v for v in table.column("fit").to_pylist()])
    want = np.array([np.nan if v is None else v for v in expected["predictions"][0]["fit"]])
    np.testing.assert_allclose(fit, want, rtol=1e-5)  # our optimum, not lme4's


def test_predict_re_form_na_is_the_population_level(capsys, tmp_path: Path) -> None:
    out = tmp_path / "pred.parquet"
    code, _, _ = run(
        capsys, "predict", "--data", SLEEP, "--formula", FORMULA, "--newdata", NEW,
        "--re-form", "NA", "--out", str(out),
    )  # fmt: skip
    assert code == 0
    want = GOLDEN["predict_sleepstudy"]["predictions"][1]
    assert want["re_form"] == "NA"
    got = pq.read_table(out).column("fit").to_pylist()
    for g, w in zip(got, want["fit"]):
        assert (g is None and w is None) or abs(g - w) <= 1e-6 * abs(w)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"--re-form": "~(1 | Foo)"}, "re_form term (1 | Foo) is not among"),
        ({"--re-form": "~ x + (1 | Subject)"}, "must list random-effects terms only"),
        ({"--no-new-levels": None}, "level '999' of grouping factor 'Subject'"),
        ({"--newdata": "/no/such.parquet"}, "--newdata: data source '/no/such.parquet'"),
        ({"--out": "/no/such/dir/p.parquet"}, "directory /no/such/dir does not exist"),
        ({"--formula": "Reaction ~ Days + (1 | Nope)"}, "unknown column 'Nope'"),
    ],
)
def test_predict_bad_input_exits_2_with_one_line(
    capsys, tmp_path: Path, options: dict, fragment: str
) -> None:
    args = {"--data": SLEEP, "--formula": FORMULA, "--newdata": NEW,
            "--out": str(tmp_path / "p.parquet"), **options}  # fmt: skip
    argv = [x for k, v in args.items() for x in ([k] if v is None else [k, v])]
    code, out, err = run(capsys, "predict", *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("sparsemm: error: ")
    assert fragment in err


def test_fit_json_with_satterthwaite_and_icc(capsys) -> None:
    code, out, _ = run(
        capsys, "fit", "--quiet", "--data", SLEEP, "--formula", FORMULA, "--format", "json",
        "--satterthwaite", "--icc",
    )  # fmt: skip
    assert code == 0
    res = json.loads(out)
    satt = GOLDEN["satt_sleepstudy"]["coef"]
    for fe in res["fixed_effects"]:
        assert abs(fe["df"] - satt[fe["term"]]["df"]) <= 1e-3 * satt[fe["term"]]["df"]
        assert abs(fe["p_value"] - satt[fe["term"]]["p"]) <= 1e-2 * satt[fe["term"]]["p"]
    icc = GOLDEN["icc_sleepstudy_slope"]
    assert abs(res["icc"]["adjusted"] - icc["icc_adjusted"]) <= 1e-4 * icc["icc_adjusted"]
    assert abs(res["icc"]["conditional"] - icc["icc_conditional"]) <= 1e-4 * icc["icc_conditional"]
    assert res["icc"]["design_effect"] == {}  # random slopes: no design effect


def test_fit_json_without_flags_is_unchanged(capsys) -> None:
    code, out, _ = run(capsys, "fit", "--quiet", "--data", SLEEP, "--formula", FORMULA,
                       "--format", "json")  # fmt: skip
    res = json.loads(out)
    assert code == 0 and "icc" not in res and "df" not in res["fixed_effects"][0]


def test_fit_text_has_lmertest_columns_and_the_icc(capsys) -> None:
    code, out, _ = run(
        capsys, "fit", "--quiet", "--data", SLEEP, "--formula", "Reaction ~ Days + (1 | Subject)",
        "--satterthwaite", "--icc",
    )  # fmt: skip
    assert code == 0
    header = next(line for line in out.splitlines() if "Estimate" in line)
    assert header.split() == ["Estimate", "Std.", "Error", "df", "t", "value", "Pr(>|t|)"]
    days = next(line for line in out.splitlines() if line.startswith(" Days"))
    assert days.split()[3] == "161.00" and days.split()[-1] == "<2e-16"
    assert "Adjusted ICC: 0.5893   Conditional ICC: 0.4244" in out
    assert "Design effect, 1 + (n/J - 1) ICC: Subject 6.304" in out


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--family", "poisson", "--icc"], "--icc needs a linear mixed model"),
        (
            ["--server", "127.0.0.1:1", "--family", "binomial", "--satterthwaite"],
            "--satterthwaite needs a linear mixed model",
        ),
    ],
)
def test_fit_inference_flags_bad_input(capsys, extra: list[str], fragment: str) -> None:
    data = str(DATA / "grouseticks.parquet")
    code, out, err = run(capsys, "fit", "--quiet", "--data", data, "--formula",
                         "TICKS ~ YEAR + (1 | BROOD)", *extra)  # fmt: skip
    assert code == 2 and out == "" and err.count("\n") == 1
    assert fragment in err
