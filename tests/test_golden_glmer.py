"""Golden values from lme4's glmer (tests/golden/glmer_golden.json, made by
tests/golden/make_golden.py).

Tolerances (issue 5): log-likelihood 1e-5 relative; fixed effects and random-effect
SDs 1e-3 relative (absolute 1e-3 for values near zero); standard errors 2e-2
relative (lme4's come from a finite-difference Hessian at its own, looser, optimum).
At a fixed (theta, beta) the Laplace deviance agrees with lme4's devfun to 1e-5.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from sparsemm import solver

HERE = Path(__file__).parent
GOLDEN_FILE = HERE / "golden" / "glmer_golden.json"
CASES = {c["name"]: c for c in json.loads(GOLDEN_FILE.read_text())} if GOLDEN_FILE.exists() else {}


def close(actual: float, expected: float, rel: float, abs_: float = 0.0) -> bool:
    return abs(actual - expected) <= max(rel * abs(expected), abs_)


@cache
def model(name: str) -> solver.GeneralizedLinearMixedModel:
    case = CASES[name]
    path = str(HERE / "data" / f"{case['dataset']}.parquet")
    data = solver.prepare(case["formula"], path, weights=case["weights"], family=case["family"])
    return solver.GeneralizedLinearMixedModel(data, solver.family(case["family"], case["link"]))


@cache
def fitted(name: str) -> solver.GLMMFit:
    return model(name).fit()


@pytest.mark.parametrize("name", sorted(CASES))
def test_laplace_deviance_at_fixed_parameters(name: str) -> None:
    m = model(name)
    nt = m.tmap.size
    for point in CASES[name]["devfun_at"]:
        theta = np.atleast_1d(np.asarray(point["theta"], dtype=float))
        beta = np.atleast_1d(np.asarray(point["beta"], dtype=float))
        assert len(theta) == nt
        assert close(m.laplace(theta, beta), point["value"], 1e-5), point


@pytest.mark.parametrize("name", sorted(CASES))
def test_loglik_and_criteria(name: str) -> None:
    case, res = CASES[name], fitted(name).result
    assert res.nobs == case["nobs"] and res.ngroups == case["ngroups"]
    assert close(res.loglik, case["loglik"], 1e-5), (res.loglik, case["loglik"])
    assert close(res.aic, case["aic"], 1e-5) and close(res.bic, case["bic"], 1e-5)
    assert res.method == "Laplace" and res.sigma is None
    assert res.singular == case["singular"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixed_effects(name: str) -> None:
    case, res = CASES[name], fitted(name).result
    got = {fe.term: fe for fe in res.fixed_effects}
    assert set(got) == set(case["fixef"])
    for term, value in case["fixef"].items():
        assert close(got[term].estimate, value, 1e-3, 1e-3), (term, got[term].estimate, value)
        assert close(got[term].std_error, case["se"][term], 2e-2), term


@pytest.mark.parametrize("name", sorted(CASES))
def test_random_effect_sds(name: str) -> None:
    case, res = CASES[name], fitted(name).result
    got = {(v.group, v.term, v.term2): v for v in res.variance_components}
    for row in case["varcorr"]:
        v = got[(row["grp"], row["var1"], row["var2"])]
        if row["var2"] is None:
            assert close(v.sd, row["sdcor"], 1e-3, 1e-3), row
