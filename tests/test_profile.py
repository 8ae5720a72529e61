"""The profile's parameterizations and API (the lme4 comparison is test_golden_profile.py)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from sparsemm import solver
from sparsemm.solver.profile import (
    _SD,
    ZETA_TOL,
    _Cor,
    _Deviance,
    _select,
    parameter_names,
    parameters,
    profile_intervals,
)


@pytest.fixture(scope="module")
def three_by_three() -> solver.LMMFit:
    """A 3 x 3 term (1 + x + z | g) and a scalar one: every kind of parameter."""
    rng = np.random.default_rng(11)
    n, m = 300, 20
    g, h = rng.integers(0, m, n), rng.integers(0, 8, n)
    x, z = rng.normal(size=n), rng.normal(size=n)
    C = np.array([[1.0, 0.4, -0.3], [0.4, 0.6, 0.2], [-0.3, 0.2, 0.5]])
    b = rng.multivariate_normal(np.zeros(3), C, size=m)
    y = 1 + x - z + b[g, 0] + b[g, 1] * x + b[g, 2] * z + 0.5 * rng.normal(size=8)[h]
    y = y + rng.normal(scale=0.7, size=n)
    table = pa.table({"y": y, "x": x, "z": z, "g": [f"g{i:02d}" for i in g], "h": h})
    return solver.fit("y ~ x + z + (1 + x + z | g) + (1 | h)", table, reml=False)


def test_names_in_lme4_order(three_by_three: solver.LMMFit) -> None:
    names = [f".sig{k:02d}" for k in range(1, 8)] + [".sigma", "(Intercept)", "x", "z"]
    assert parameter_names(three_by_three) == names


def test_each_parameterization_holds_its_parameter(three_by_three: solver.LMMFit) -> None:
    """At the estimate, phi's start reproduces the fit's deviance; elsewhere it keeps
    the held SD or correlation at the value asked for, whatever the other coordinates."""
    fit = three_by_three
    dev = _Deviance(fit.model)
    base = dev.profiled(fit.sol.theta)
    rng = np.random.default_rng(0)
    for p in parameters(fit.model, fit.sol):
        phi = p.start(fit.sol.theta)
        assert abs(p.objective(dev, p.estimate)(phi) - base) < 1e-8 * base, p.name
        moved = phi + 0.1 * rng.normal(size=len(phi))
        T = fit.model.tmap.blocks
        if isinstance(p, _SD):
            theta, sigma = p.theta_sigma(moved, 1.7)
            assert math.isclose(sigma * np.linalg.norm(theta[p.row]), 1.7)
        elif isinstance(p, _Cor):
            Tk = T(p.theta(moved, -0.35))[0]
            cor = Tk[p.i] @ Tk[p.j] / np.linalg.norm(Tk[p.i]) / np.linalg.norm(Tk[p.j])
            assert math.isclose(cor, -0.35), p.name


def test_which_and_level(three_by_three: solver.LMMFit) -> None:
    """A correlation of the 3 x 3 term and a fixed effect at level 0.9: zeta is -/+ the
    0.95 quantile at the bounds."""
    res = profile_intervals(three_by_three, level=0.9, which=["x", ".sig03"])
    assert [r.name for r in res.intervals] == [".sig03", "x"]
    z = 1.6448536269514722
    assert math.isclose(res.quantile, z)
    for row, trace in zip(res.intervals, res.traces):
        zeta = dict(zip(trace.values, trace.zeta))
        assert row.lower < row.estimate < row.upper
        assert abs(zeta[row.lower] + z) < ZETA_TOL and abs(zeta[row.upper] - z) < ZETA_TOL


def test_which_shortcuts_and_bad_input(three_by_three: solver.LMMFit) -> None:
    params = parameters(three_by_three.model, three_by_three.sol)
    assert [p.name for p in _select(params, "beta_")] == ["(Intercept)", "x", "z"]
    assert len(_select(params, "theta_")) == 8  # 7 of the terms and .sigma
    with pytest.raises(solver.InputError, match="no parameter"):
        profile_intervals(three_by_three, which=["nope"])
    with pytest.raises(solver.InputError, match="level"):
        profile_intervals(three_by_three, level=1.5)
