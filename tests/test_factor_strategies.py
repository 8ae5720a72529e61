"""The factor strategies agree: the Schur complement updated from theta (scalar first
term, with scalar or vector trailing terms) against CHOLMOD on the same model."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.ehr_generator import FORMULA, generate
from sparsemm import solver
from sparsemm.solver.factor import CholmodFactor, MappedSchurFactor
from sparsemm.solver.gradient import gradient
from sparsemm.solver.lmm import LinearMixedModel
from sparsemm.solver.optimize import derivatives

FORMULAS = {
    "vector_trailing": FORMULA,  # (1 | patient) + (1 | physician) + (1 + acei | hospital)
    "scalar_trailing": "y ~ age + acei + (1 | patient) + (1 | physician) + (1 | hospital)",
    "two_vector_trailing": "y ~ age + acei + (1 | patient) + (1 + acei + egfr | hospital)"
    " + (1 | physician) + (0 + age | hospital)",
}


@pytest.fixture(scope="module")
def table():
    return generate(8_000, seed=3)


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_schur_from_theta_matches_cholmod(table, name: str) -> None:
    data = solver.prepare(FORMULAS[name], table)
    schur = LinearMixedModel(data, reml=True, ordering="schur")
    cholmod = LinearMixedModel(data, reml=True, ordering="metis")
    assert type(schur.pls.factor) is MappedSchurFactor
    assert schur.pls.factor.diagonal == (name == "scalar_trailing")
    assert isinstance(cholmod.pls.factor, CholmodFactor)
    rng = np.random.default_rng(5)
    for _ in range(3):
        theta = schur.tmap.start() * rng.uniform(0.2, 1.5, schur.tmap.size)
        theta[~schur.tmap.diagonal_mask()] = rng.uniform(-0.3, 0.3)
        a, b = schur.solve(theta), cholmod.solve(theta)
        assert a.logdet_L == pytest.approx(b.logdet_L, rel=1e-10)
        assert a.pwrss == pytest.approx(b.pwrss, rel=1e-10)
        np.testing.assert_allclose(a.beta, b.beta, rtol=1e-9)
        analytic = gradient(schur.pls, schur.criterion, a)
        numeric, _ = derivatives(schur.objective, theta, 1e-5)
        np.testing.assert_allclose(analytic, numeric, rtol=2e-5, atol=2e-4)


def test_schur_follows_new_weights(table) -> None:
    """PIRLS reweights the rows: new cross-products, same pattern, same answers."""
    formula = FORMULAS["scalar_trailing"]
    w = np.random.default_rng(1).uniform(0.5, 2.0, table.num_rows)
    weighted = table.append_column("w", [w])
    schur = LinearMixedModel(solver.prepare(formula, table), ordering="schur")
    target = solver.prepare(formula, weighted, weights="w")
    schur.pls.set_crossproducts(target.cp)
    direct = LinearMixedModel(target, ordering="metis")
    theta = np.array([0.7, 0.3, 0.2])
    assert schur.solve(theta).pwrss == pytest.approx(direct.solve(theta).pwrss, rel=1e-10)
    assert schur.solve(theta).logdet_L == pytest.approx(direct.solve(theta).logdet_L, rel=1e-10)


@pytest.mark.parametrize("name", ["vector_trailing", "scalar_trailing"])
def test_single_precision_traces(table, name: str, monkeypatch) -> None:
    """The gradient's traces from the single-precision S^-1 agree with double precision
    to the size of its probe residual; a residual over the bound falls back to double."""
    from sparsemm.solver import factor

    model = LinearMixedModel(solver.prepare(FORMULAS[name], table), ordering="schur")
    pls, theta = model.pls, model.tmap.start() * 0.6
    model.solve(theta)
    exact = pls.trace_sums(theta)
    monkeypatch.setattr(factor, "SINGLE_FROM", 0)
    model.solve(theta * 1.01)  # another theta clears the cached inverses
    model.solve(theta)
    single = pls.trace_sums(theta)
    assert pls.factor._Sinv_lower is None  # the traces did not need the double inverse
    for s, d in zip(single, exact):
        np.testing.assert_allclose(s, d, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(factor, "SINGLE_RESIDUAL", 0.0)
    model.solve(theta * 1.01)
    model.solve(theta)
    calls = []
    double = factor.MappedSchurFactor.schur_inverse_lower
    monkeypatch.setattr(
        factor.MappedSchurFactor, "schur_inverse_lower", lambda f: calls.append(1) or double(f)
    )
    fallback = pls.trace_sums(theta)
    assert calls  # the traces fell back to the double-precision inverse
    for s, d in zip(fallback, exact):
        np.testing.assert_allclose(s, d, rtol=1e-12)


@pytest.fixture(scope="module")
def larger_table():
    return generate(60_000, seed=3)  # 300 physicians: S no longer fills in completely


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_density_read_off_the_map_matches_the_product(larger_table, name, monkeypatch) -> None:
    """choose_factor's density of S (from the pair map) is plan_factor's (from B B')."""
    from sparsemm.solver import factor, pls

    monkeypatch.setattr(factor, "SMALL_SCHUR", 0)  # measure even a small block
    monkeypatch.setattr(pls, "SMALL_SCHUR", 0)
    data = solver.prepare(FORMULAS[name], larger_table)
    model = LinearMixedModel(data, reml=True, ordering="schur")
    mapped = model.pls.factor
    assert isinstance(mapped, MappedSchurFactor)
    M0 = model.pls.scaled(np.where(model.tmap.diagonal_mask(), 1.0, 0.5))
    expected = pls._schur_density(M0, mapped.n1)
    assert 0.0 < expected < 1.0
    assert mapped.schur_density() == pytest.approx(expected, rel=1e-12)
