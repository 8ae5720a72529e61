"""Likelihood-ratio tests and Wald intervals against lme4 (tests/golden/inference_golden.json).

Tolerances (issue 6): chi-square and p 1e-4 relative; logLik, AIC, BIC 1e-6; Wald
bounds 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsemm import solver
from sparsemm.solver.inference import likelihood_ratio, wald_intervals

HERE = Path(__file__).parent
CASES = json.loads((HERE / "golden" / "inference_golden.json").read_text())


def close(actual: float, expected: float, rel: float) -> bool:
    return abs(actual - expected) <= rel * abs(expected)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_likelihood_ratio_and_wald(case: dict) -> None:
    data = str(HERE / "data" / f"{case['uses_dataset']}.parquet")
    small = solver.fit(case["small"], data, reml=case["REML"])
    big = solver.fit(case["big"], data, reml=case["REML"])
    lrt = likelihood_ratio(small, big)
    assert lrt.df == case["df"]
    assert close(lrt.chisq, case["chisq"], 1e-4), (lrt.chisq, case["chisq"])
    assert close(lrt.p, case["p"], 1e-4), (lrt.p, case["p"])
    for mine, theirs in ((lrt.small, case["models"]["small"]), (lrt.big, case["models"]["big"])):
        assert mine.npar == theirs["npar"]
        for key, expected in (("loglik", "logLik"), ("aic", "AIC"), ("bic", "BIC")):
            assert close(getattr(mine, key), theirs[expected], 1e-6), key
    bounds = wald_intervals(big.result)
    for term, ci in case["wald"].items():
        assert close(bounds[term][0], ci["lower"], 1e-4), term
        assert close(bounds[term][1], ci["upper"], 1e-4), term
