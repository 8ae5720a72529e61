"""PIRLS steps by conjugate gradients preconditioned by an earlier factor (solver/pcg.py).

Tolerances: PCG to a relative residual of 1e-12 agrees with a dense solve to 1e-9
relative; the preconditioner built from a factor at the same weights inverts the
operator to 1e-9; Laplace deviances reached through PCG steps agree with those of
direct (factored) steps to 1e-9 relative (d is ~1e3-1e4 here, PIRLS stops at 1e-14)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sparsemm import solver
from sparsemm.solver import glmm
from sparsemm.solver.pcg import FactorPreconditioner, PLSOperator, pcg

DATA = Path(__file__).parent / "data"
Case = tuple[str, str, str, str]  # formula, dataset, family, ordering (factor strategy)
VERBAGG = (
    "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)",
    "VerbAgg",
    "binomial",
    "auto",
)
GROUSE = ("TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", "grouseticks", "poisson", "auto")
CHOLMOD = VERBAGG[:3] + ("amd",)
CASES = pytest.mark.parametrize(
    "case", [VERBAGG, GROUSE, CHOLMOD], ids=["VerbAgg", "grouseticks", "VerbAgg-cholmod"]
)


def model(case: Case) -> solver.GeneralizedLinearMixedModel:
    formula, dataset, fam, ordering = case
    data = solver.prepare(formula, str(DATA / f"{dataset}.parquet"), family=fam)
    return solver.GeneralizedLinearMixedModel(data, solver.family(fam), ordering)


def test_pcg_solves_an_spd_system_with_a_nearby_preconditioner() -> None:
    rng = np.random.default_rng(3)
    B = rng.normal(size=(40, 40))
    A = B @ B.T + 40 * np.eye(40)
    L = np.linalg.cholesky(A + np.diag(rng.uniform(0, 8, 40)))  # P: A perturbed

    def pinv(r: np.ndarray) -> np.ndarray:
        return np.linalg.solve(L.T, np.linalg.solve(L, r))

    r = rng.normal(size=40)
    x, products = pcg(lambda v: A @ v, pinv, r, pinv(r), 1e-12, 100)
    assert x is not None and products < 40
    np.testing.assert_allclose(x, np.linalg.solve(A, r), rtol=1e-9)
    assert pcg(lambda v: A @ v, pinv, r, pinv(r), 1e-12, 2) == (None, 2)


@CASES
@pytest.mark.parametrize("with_beta", [True, False])
def test_preconditioner_from_a_factor_at_the_same_weights_inverts_the_operator(
    case: Case, with_beta: bool
) -> None:
    m = model(case)
    theta = m.tmap.start() * 0.7
    m.laplace(theta)  # leaves the factor at the modes' weights, X included
    st = m.state
    mu, d = m.family.link.inverse(st.eta)
    w = m.wt * d * d / m.family.variance(mu)
    X = m.passes.X if with_beta else m.passes.X[:, :0]
    A = PLSOperator(m.passes.Z, m.passes.Zt, X, w, m.tmap.Lambda(theta))
    pre = FactorPreconditioner(m.pls.factor, m._factored, with_beta)
    x = np.random.default_rng(0).normal(size=A.q + X.shape[1])
    np.testing.assert_allclose(pre(A(x)), x, rtol=1e-9, atol=1e-9)


@CASES
def test_laplace_deviance_by_pcg_steps_matches_direct_steps(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def counted(*args, **kwargs):
        x, products = pcg(*args, **kwargs)
        calls.append(products)
        return x, products

    monkeypatch.setattr(glmm, "pcg", counted)
    pcg_model, direct = model(case), model(case)
    start = pcg_model.tmap.start()
    pcg_model.laplace(start)  # the first evaluation factors: then PCG steps
    beta = pcg_model.state.beta
    for theta, b in [(0.8 * start, None), (0.8 * start, beta), (0.75 * start, beta + 0.01)]:
        calls.clear()
        d_pcg = pcg_model.laplace(theta, b)
        assert calls, "PIRLS took no PCG step"
        direct._factored = None  # no preconditioner: direct steps only
        monkeypatch.setattr(glmm, "pcg", lambda *a, **k: (None, 0))
        d_direct = direct.laplace(theta, b)
        monkeypatch.setattr(glmm, "pcg", counted)
        assert abs(d_pcg - d_direct) <= 1e-9 * abs(d_direct), (theta, b, d_pcg, d_direct)
