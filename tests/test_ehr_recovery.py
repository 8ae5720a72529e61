"""Parameter recovery on the synthetic EHR design (crossed patients x physicians,
hospitals with random intercepts and acei slopes), small scale, seeded.

The fixed effects must lie within 2.5 standard errors of the generating values
(a seeded draw, so the test is deterministic); the patient, physician and residual
SDs within 10% of theirs (6,000 patients and 300 physicians pin them down well).
"""

from __future__ import annotations

import pytest

from benchmarks.ehr_generator import FORMULA, TRUE_PARAMS, generate
from sparsemm import solver


@pytest.fixture(scope="module")
def result() -> solver.FitResult:
    return solver.fit(FORMULA, generate(60_000, seed=11)).result


def test_fixed_effects_within_standard_errors(result: solver.FitResult) -> None:
    truth = dict(zip(TRUE_PARAMS.beta_names, TRUE_PARAMS.beta))
    for fe in result.fixed_effects:
        assert abs(fe.estimate - truth[fe.term]) < 2.5 * fe.std_error, fe


def test_variance_components_recovered(result: solver.FitResult) -> None:
    sd = {(v.group, v.term): v.sd for v in result.variance_components if v.term2 is None}
    assert sd[("patient", "(Intercept)")] == pytest.approx(TRUE_PARAMS.sd_patient, rel=0.1)
    assert sd[("physician", "(Intercept)")] == pytest.approx(TRUE_PARAMS.sd_physician, rel=0.1)
    assert sd[("Residual", None)] == pytest.approx(TRUE_PARAMS.sigma, rel=0.1)
    assert result.converged and not result.singular
    assert result.ngroups == {"patient": 6000, "physician": 300, "hospital": 6}
