"""Golden values from lme4 (tests/golden/lme4_golden.json, made by tests/golden/make_golden.py).

Tolerances (issue 2): objective (REML criterion / ML deviance) and log-likelihood
1e-6 relative; fixed effects, standard errors and variance-component SDs 1e-4
relative (absolute 1e-6 for values that are zero at a singular fit); the singular
flag equal.  At a fixed theta, independent of the optimizer, the objective agrees to
1e-8 relative.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from sparsemm import solver
from sparsemm.solver.lmm import LinearMixedModel

HERE = Path(__file__).parent
GOLDEN = json.loads((HERE / "golden" / "lme4_golden.json").read_text())
CASES = {c["name"]: c for c in GOLDEN}


@cache
def model_data(name: str) -> solver.ModelData:
    case = CASES[name]
    path = HERE / "data" / f"{case['dataset']}.parquet"
    return solver.prepare(case["formula"], str(path), weights=case.get("weights"))


@cache
def fitted(name: str) -> solver.LMMFit:
    return LinearMixedModel(model_data(name), reml=CASES[name]["REML"]).fit()


def close(actual: float, expected: float, rel: float, abs_: float = 0.0) -> bool:
    return abs(actual - expected) <= max(rel * abs(expected), abs_)


@pytest.mark.parametrize("name", sorted(CASES))
def test_objective_at_fixed_theta(name: str) -> None:
    model = LinearMixedModel(model_data(name), reml=CASES[name]["REML"])
    for point in CASES[name]["devfun_at"]:
        value = model.objective(np.atleast_1d(np.asarray(point["theta"], dtype=float)))
        assert close(value, point["value"], 1e-8), (point, value)


@pytest.mark.parametrize("name", sorted(CASES))
def test_criteria(name: str) -> None:
    case, res = CASES[name], fitted(name).result
    assert res.nobs == case["nobs"]
    assert res.ngroups == case["ngroups"]
    objective = res.reml_criterion if case["REML"] else res.deviance
    expected = case["remlcrit"] if case["REML"] else case["deviance_ml"]
    assert close(objective, expected, 1e-6), (objective, expected)
    assert close(res.loglik, case["loglik"], 1e-6)
    assert close(res.aic, case["aic"], 1e-6)
    assert close(res.bic, case["bic"], 1e-6)
    assert close(res.deviance, case["deviance_ml"], 1e-6)
    assert res.singular == case["singular"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixed_effects(name: str) -> None:
    case, res = CASES[name], fitted(name).result
    got = {fe.term: fe for fe in res.fixed_effects}
    assert set(got) == set(case["fixef"])
    for term, value in case["fixef"].items():
        assert close(got[term].estimate, value, 1e-4, 1e-8), term
        assert close(got[term].std_error, case["se"][term], 1e-4), term
        assert close(got[term].statistic, case["tvalue"][term], 1e-4, 1e-6), term


@pytest.mark.parametrize("name", sorted(CASES))
def test_variance_components(name: str) -> None:
    case, res = CASES[name], fitted(name).result
    got = {(v.group, v.term, v.term2): v for v in res.variance_components}
    assert len(got) == len(case["varcorr"])
    for row in case["varcorr"]:
        v = got[(row["grp"], row["var1"], row["var2"])]
        if row["var2"] is None:
            assert close(v.sd, row["sdcor"], 1e-4, 1e-6), row
            assert close(v.variance, row["vcov"], 2e-4, 1e-8), row
        else:
            assert close(v.corr, row["sdcor"], 1e-3, 1e-4), row


@pytest.mark.parametrize("name", sorted(CASES))
def test_conditional_modes(name: str) -> None:
    case = CASES[name]
    table = fitted(name).ranef().to_pylist()
    got = {(r["group"], r["term"], r["level"]): r for r in table}
    assert len(got) == len(case["ranef"])
    scale = max(abs(r["condval"]) for r in case["ranef"]) or 1.0
    for row in case["ranef"]:
        r = got[(row["grpvar"], row["term"], row["grp"])]
        assert close(r["condval"], row["condval"], 1e-4, 1e-4 * scale), row
        assert close(r["condsd"], row["condsd"], 1e-4, 1e-6), row


@pytest.mark.parametrize("name", sorted(CASES))
def test_fitted_and_residuals(name: str) -> None:
    case = CASES[name]
    table = fitted(name).fitted()
    k = len(case["fitted"])
    scale = float(np.max(np.abs(case["fitted"])))
    np.testing.assert_allclose(
        table.column("fitted").to_numpy()[:k], case["fitted"], rtol=1e-5, atol=1e-5 * scale
    )
    resid = table.column("residual").to_numpy()[:k]
    scale = float(np.max(np.abs(case["resid"])))
    np.testing.assert_allclose(resid, case["resid"], rtol=1e-4, atol=1e-5 * scale)
