"""The closed-form gradient of the profiled objective against finite differences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sparsemm import solver
from sparsemm.solver.gradient import gradient
from sparsemm.solver.lmm import LinearMixedModel
from sparsemm.solver.optimize import derivatives

HERE = Path(__file__).parent
CASES = {c["name"]: c for c in json.loads((HERE / "golden" / "lme4_golden.json").read_text())}
NAMES = ["sleepstudy_reml", "sleepstudy_ml", "sleepstudy_weights", "exam_slopes",
         "pastes", "penicillin", "cake_quadratic", "dyestuff2"]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_gradient_matches_finite_differences(name: str) -> None:
    case = CASES[name]
    data = solver.prepare(
        case["formula"], str(HERE / "data" / f"{case['dataset']}.parquet"), weights=case["weights"]
    )
    model = LinearMixedModel(data, reml=case["REML"])
    for point in case["devfun_at"]:
        theta = np.atleast_1d(np.asarray(point["theta"], dtype=float)) + 0.05
        analytic = gradient(model.pls, model.criterion, model.solve(theta))
        numeric, _ = derivatives(model.objective, theta, 1e-5)
        np.testing.assert_allclose(analytic, numeric, rtol=2e-5, atol=2e-5)
