"""Profile-likelihood intervals against lme4's confint(method = "profile")
(tests/golden/profile_golden.json, made by profile_golden.R).

Tolerance 1e-3 relative, the size of lme4's own error: lme4 inverts a spline through
~10-20 profiled points per parameter, sparsemm solves zeta(x) = -/+ z directly.  Measured
on these cases the largest difference is 1.7e-4 (Dyestuff .sig01 lower, Dyestuff2
intercept); evaluating lme4's deviance at both bounds puts sparsemm's on the root (see
profile_golden.R).  A bound lme4 cannot reach (an SD's 0) must be that limit exactly.
With prior weights lme4's fixed-effect profile is wrong (see profile_golden.R): those
bounds are checked against the roots of lme4's offset-model deviance instead, 1e-6.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsemm import solver
from sparsemm.solver.profile import ZETA_TOL, ProfileResult, profile_intervals

HERE = Path(__file__).parent
CASES = json.loads((HERE / "golden" / "profile_golden.json").read_text())
REL = 1e-3


def close(actual: float, expected: float, rel: float) -> bool:
    if expected in (0.0, -1.0, 1.0) and actual == expected:  # a parameter's limit
        return True
    return abs(actual - expected) <= rel * abs(expected)


def profile(case: dict) -> ProfileResult:
    data = str(HERE / "data" / f"{case['uses_dataset']}.parquet")
    fit = solver.fit(case["formula"], data, reml=case["REML"], weights=case["weights"])
    return profile_intervals(fit, level=case["level"])


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_profile_intervals(case: dict) -> None:
    res = profile(case)
    assert [row.name for row in res.intervals] == list(case["intervals"])
    assert abs(res.deviance - case["deviance"]) <= 1e-6 * case["deviance"]
    assert not res.messages
    checked = {**case["intervals"], **case.get("offset_intervals", {})}
    rel = {name: 1e-6 for name in case.get("offset_intervals", {})}
    for row in res.intervals:
        expected = checked[row.name]
        for side in ("lower", "upper"):
            mine = getattr(row, side)
            assert close(mine, expected[side], rel.get(row.name, REL)), (row.name, side, mine)


def test_zeta_at_the_bounds_is_the_quantile() -> None:
    """Each bound is a profiled point where |zeta| = z (or a limit zeta never reached)."""
    case = next(c for c in CASES if c["name"] == "dyestuff2")
    res = profile(case)
    z = res.quantile
    for row, trace in zip(res.intervals, res.traces):
        points = dict(zip(trace.values, trace.zeta))
        assert points[row.estimate] == 0.0
        for bound, sign in ((row.lower, -1), (row.upper, 1)):
            if bound == 0.0:  # .sig01 of a singular fit: zeta(0) does not reach -z
                assert points[0.0] > -z
                continue
            assert abs(points[bound] - sign * z) < ZETA_TOL
