"""Inference after the fit against R (tests/golden/predict_golden.json, predict_golden.R).

Predictions (kind "predict"): lme4's ``predict(m, newdata, re.form, allow.new.levels =
TRUE)`` and the fixed-part standard errors sqrt(diag(X_new vcov(m) X_new')), on new rows
with known levels, new levels, a missing grouping value (a new level, as lme4) and a
missing covariate (a null prediction, lme4's NA).

Tolerances: lme4's optimum differs from ours by ~1e-6 relative in theta, which moves
predictions by up to ~6e-6 relative (Exam with random slopes) and standard errors by up
to ~3e-5.  So the 1e-8 comparison is made at lme4's estimates: our model evaluated at
lme4's theta (``LinearMixedModel.solve(theta)``, no optimizing), where everything else
(beta, the conditional modes, sigma) follows from theta; relative 1e-8, absolute 1e-8
times the largest |prediction| for values near 0.  At our own optimum the same numbers
agree to 1e-4.

ICC (kind "icc"): performance::icc's adjusted and conditional ICC, insight's variance
components, icc(by_group = TRUE) and the design effect, 1e-6 relative at lme4's theta
(absolute 1e-12 for var_fixed = 0), 1e-4 at our optimum.

Satterthwaite (kind "satterthwaite"): summary(lmerTest::lmer(...))'s df 1e-3 and p 1e-4
relative at lme4's estimates (measured: 1e-7 and 4e-6); at our optimum df 1e-3 and p
1e-2, as t differs by up to 7e-5 there and p's relative error is about t^2 times that.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparsemm import solver
from sparsemm.solver.icc import icc
from sparsemm.solver.lmm import LinearMixedModel, LMMFit
from sparsemm.solver.results import build_result
from sparsemm.solver.satterthwaite import satterthwaite, varpar_covariance

HERE = Path(__file__).parent
DATA = HERE / "data"
GOLDEN = json.loads((HERE / "golden" / "predict_golden.json").read_text())
CASES = {c["name"]: c for c in GOLDEN}
PREDICT = [n for n, c in CASES.items() if c["kind"] == "predict"]
ICC = [n for n, c in CASES.items() if c["kind"] == "icc"]
SATTERTHWAITE = [n for n, c in CASES.items() if c["kind"] == "satterthwaite"]
SLEEP = str(DATA / "sleepstudy.parquet")


@cache
def model(name: str) -> LinearMixedModel:
    case = CASES[name]
    path = str(DATA / f"{case['uses_dataset']}.parquet")
    data = solver.prepare(case["formula"], path, weights=case.get("weights"))
    return LinearMixedModel(data, reml=case["REML"])


def fit_at(m: LinearMixedModel, theta: list[float]) -> LMMFit:
    """The model at a given theta, without optimizing (lme4's estimates)."""
    sol = m.solve(np.asarray(theta, dtype=float))
    return LMMFit(m, sol, build_result(m, sol, [], 0, "fixed theta"), 0.0)


@cache
def fitted(name: str, at_lme4: bool) -> LMMFit:
    m = model(name)
    return fit_at(m, CASES[name]["theta"]) if at_lme4 else m.fit()


def values(column: pa.ChunkedArray | list) -> np.ndarray:
    items = column.to_pylist() if hasattr(column, "to_pylist") else column
    return np.array([np.nan if v is None else v for v in items], dtype=float)


def assert_close(got: np.ndarray, expected: np.ndarray, rel: float) -> None:
    assert np.array_equal(np.isnan(got), np.isnan(expected)), (got, expected)
    ok = ~np.isnan(expected)
    scale = float(np.max(np.abs(expected[ok])))
    np.testing.assert_allclose(got[ok], expected[ok], rtol=rel, atol=rel * scale)


PARAMS = [(n, i) for n in PREDICT for i in range(len(CASES[n]["predictions"]))]


@pytest.mark.parametrize(("name", "i"), PARAMS, ids=[f"{n}-{i}" for n, i in PARAMS])
@pytest.mark.parametrize("at_lme4", [True, False], ids=["lme4_theta", "our_optimum"])
def test_predictions(name: str, i: int, at_lme4: bool) -> None:
    case = CASES[name]
    expected = case["predictions"][i]
    newdata = str(DATA / f"{case['newdata']}.parquet")
    table = fitted(name, at_lme4).predict(newdata, re_form=expected["re_form"], se_fit=True)
    assert table.num_rows == case["nrow"]
    rel = 1e-8 if at_lme4 else 1e-4
    assert_close(values(table.column("fit")), values(expected["fit"]), rel)
    assert_close(values(table.column("se_fit")), values(case["se_fit"]), rel)


def test_new_levels_are_population_level_and_known_ones_are_not() -> None:
    fit = fitted("predict_sleepstudy", True)
    newdata = pq.read_table(DATA / "sleepstudy_new.parquet")
    full = values(fit.predict(newdata).column("fit"))
    population = values(fit.predict(newdata, re_form="NA").column("fit"))
    subject = newdata.column("Subject").to_pylist()
    new = np.array([s in ("999", "1000", None) for s in subject])
    known = ~new & ~np.isnan(full)
    np.testing.assert_array_equal(full[new], population[new])
    assert np.all(np.abs(full[known] - population[known]) > 1e-3)


def test_no_new_levels_refuses_them() -> None:
    fit = fitted("predict_sleepstudy", True)
    with pytest.raises(solver.InputError, match="level '999' of grouping factor 'Subject'"):
        fit.predict(str(DATA / "sleepstudy_new.parquet"), allow_new_levels=False)
    known = pa.table({"Days": [1.0, 2.0], "Subject": ["308", "372"]})
    assert fit.predict(known, allow_new_levels=False).column("fit").null_count == 0


def test_input_errors_name_the_fault() -> None:
    fit = fitted("predict_exam_factors", True)
    row = {"standLRT": [0.1], "schgend": ["mixed"], "vr": ["mid 50%"], "school": ["1"]}
    with pytest.raises(solver.InputError, match="column 'vr' has level 'middle'"):
        fit.predict(pa.table({**row, "vr": ["middle"]}))
    with pytest.raises(solver.InputError, match="newdata has no column 'schgend'"):
        fit.predict(pa.table({k: v for k, v in row.items() if k != "schgend"}))
    with pytest.raises(solver.InputError, match="'standLRT' is a factor"):
        fit.predict(pa.table({**row, "standLRT": ["high"]}))
    with pytest.raises(solver.InputError, match=r"re_form term \(1 \| class\) is not among"):
        fit.predict(pa.table(row), re_form="~(1 | class)")
    # the response is not needed, the grouping column not with re_form = NA
    no_school = {k: v for k, v in row.items() if k != "school"}
    assert fit.predict(pa.table(no_school), re_form="NA").num_rows == 1


def test_same_predictions_from_a_csv_and_an_sql_source(tmp_path: Path) -> None:
    fit = fitted("predict_sleepstudy", True)
    parquet = DATA / "sleepstudy_new.parquet"
    table = pq.read_table(parquet)
    csv = tmp_path / "new.csv"
    table.to_pandas().to_csv(csv, index=False)
    expected = values(fit.predict(str(parquet)).column("fit"))
    for source in (str(csv), f"sql:SELECT * FROM read_parquet('{parquet}')"):
        got = fit.predict(source).column("fit")
        assert_close(values(got), expected, 1e-12)


# ---- ICC -------------------------------------------------------------------------------


def close(actual: float | None, expected: float | None, rel: float, abs_: float = 0.0) -> bool:
    if expected is None or actual is None:
        return actual is expected
    return abs(actual - expected) <= max(rel * abs(expected), abs_)


@pytest.mark.parametrize("name", ICC)
@pytest.mark.parametrize("at_lme4", [True, False], ids=["lme4_theta", "our_optimum"])
def test_icc(name: str, at_lme4: bool) -> None:
    case = CASES[name]
    got = icc(fitted(name, at_lme4))
    rel = 1e-6 if at_lme4 else 1e-4
    assert close(got.adjusted, case["icc_adjusted"], rel), (got, case["icc_adjusted"])
    assert close(got.conditional, case["icc_conditional"], rel), got
    assert close(got.var_fixed, case["var_fixed"], rel, 1e-12), got
    assert close(got.var_random, case["var_random"], rel), got
    assert close(got.var_residual, case["var_residual"], rel), got
    by_group, deff = case["icc_by_group"] or {}, case["design_effect"] or {}
    assert set(got.by_group) == set(by_group) and set(got.design_effect) == set(deff)
    for g in by_group:
        assert close(got.by_group[g], by_group[g], rel), g
        assert close(got.design_effect[g], deff[g], rel), g


def test_icc_of_a_singular_fit_is_none_with_a_note() -> None:
    got = icc(fitted("icc_dyestuff2_singular", False))
    assert got.adjusted is None and got.conditional is None and got.note


# ---- Satterthwaite -----------------------------------------------------------------------


@pytest.mark.parametrize("name", SATTERTHWAITE)
@pytest.mark.parametrize("at_lme4", [True, False], ids=["lme4_theta", "our_optimum"])
def test_satterthwaite(name: str, at_lme4: bool) -> None:
    case = CASES[name]
    tests = satterthwaite(fitted(name, at_lme4))
    assert [t.term for t in tests] == list(case["coef"])
    p_rel = 1e-4 if at_lme4 else 1e-2
    for t in tests:
        expected = case["coef"][t.term]
        assert close(t.df, expected["df"], 1e-3), (t, expected)
        assert close(t.p_value, expected["p"], p_rel, 1e-300), (t, expected)
        assert close(t.statistic, expected["t"], 1e-8 if at_lme4 else 1e-4), (t, expected)
        assert close(t.std_error, expected["se"], 1e-8 if at_lme4 else 1e-4), (t, expected)


def test_vcov_varpar_is_lmertests() -> None:
    """A = 2 H^+ itself (lmerTest's vcov_varpar slot), at lme4's estimates."""
    case = CASES["satt_sleepstudy"]
    A = varpar_covariance(fitted("satt_sleepstudy", True)).vcov_varpar
    expected = np.asarray(case["vcov_varpar"]).reshape(A.shape, order="F")
    np.testing.assert_allclose(A, expected, rtol=1e-5, atol=1e-5 * np.max(np.abs(expected)))
