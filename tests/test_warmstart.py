"""PIRLS' warm starts: the local linear model is exact for modes linear in x, and a fit's
Laplace deviance does not depend on where PIRLS started from."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparsemm import solver
from sparsemm.solver.warmstart import WarmStarts


def test_prediction_is_exact_for_linear_modes() -> None:
    rng = np.random.default_rng(1)
    A, c = rng.normal(size=(50, 3)), rng.normal(size=50)
    starts = WarmStarts(3)
    assert starts.predict(np.zeros(3)) is None
    for x in [np.zeros(3), *np.eye(3) * 1e-3, -np.eye(3)[0] * 1e-3]:
        starts.add(x, A @ x + c)
    x = np.array([1e-3, 1e-3, -2e-3])
    np.testing.assert_allclose(starts.predict(x), A @ x + c, rtol=1e-9, atol=1e-12)


def test_stored_point_returns_its_modes_and_store_is_bounded() -> None:
    starts = WarmStarts(1)
    for k in range(10):
        starts.add(np.array([float(k)]), np.array([k * 2.0]))
    assert len(starts.points) == 4
    np.testing.assert_array_equal(starts.predict(np.array([8.0])), [16.0])
    np.testing.assert_allclose(starts.predict(np.array([8.5])), [17.0])


def test_laplace_deviance_does_not_depend_on_the_start() -> None:
    path = str(Path(__file__).parent / "data" / "cbpp.parquet")
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    data = solver.prepare(formula, path, family="binomial")
    beta, theta = np.array([-1.398, -0.992, -1.128, -1.580]), np.array([0.642])
    fam = solver.family("binomial")
    fresh, warm = (
        solver.GeneralizedLinearMixedModel(data, fam),
        solver.GeneralizedLinearMixedModel(data, fam),
    )
    for t in ([0.5], [0.64], [0.643], [1.5], [0.6425]):  # a history for the warm starts
        warm.laplace(np.array(t), beta)
    cold = fresh.laplace(theta, beta)
    assert abs(warm.laplace(theta, beta) - cold) <= 1e-10 * abs(cold)
