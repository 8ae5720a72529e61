"""The Laplace deviance's closed-form gradient (solver/laplace_gradient.py) and the row
leverages it needs (solver/leverage.py).

Tolerances: leverages agree with a dense Z Lambda M^-1 Lambda'Z' to 1e-12 (they are
<= 1); the gradient agrees with central differences of d (step 1e-5, PIRLS to 1e-14)
to 1e-6 of its largest entry (measured: 2e-10); fits with and without the gradient
reach the same -2 log-likelihood to 1e-9 relative and the same estimates to 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sparsemm import solver
from sparsemm.solver import factor as factor_module
from sparsemm.solver.laplace_gradient import NoGradient
from sparsemm.solver.leverage import RowLeverages

DATA = Path(__file__).parent / "data"
VERBAGG = ("r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", "VerbAgg", "binomial")
VECTOR = ("r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 + Gender | item)", "VerbAgg",
          "binomial")  # fmt: skip
GROUSE = ("TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", "grouseticks", "poisson")
CBPP = ("cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp", "binomial")
CASES = pytest.mark.parametrize(
    "case",
    [VERBAGG, VECTOR, GROUSE, CBPP],
    ids=["VerbAgg", "VerbAgg-vector", "grouseticks", "cbpp-one-term"],
)


def model(
    case: tuple[str, str, str], link: str | None = None
) -> solver.GeneralizedLinearMixedModel:
    formula, dataset, fam = case
    data = solver.prepare(formula, str(DATA / f"{dataset}.parquet"), family=fam)
    return solver.GeneralizedLinearMixedModel(data, solver.family(fam, link))


def theta_at(m: solver.GeneralizedLinearMixedModel) -> np.ndarray:
    theta = 0.7 * m.tmap.start()
    if len(theta) > 3:  # (1 + Gender | item): a correlated, unequal T
        theta[1:3] = [0.1, 0.3]
    return theta


@CASES
def test_leverages_match_a_dense_inverse(case) -> None:
    m = model(case)
    theta = theta_at(m)
    m.laplace(theta)
    h = RowLeverages(m.passes.Z, m.pls.factor)(m.pls.factor, float(theta[0]))
    st = m.state
    mu, d = m.family.link.inverse(st.eta)
    w = m.wt * d * d / m.family.variance(mu)
    ZL = (m.passes.Z @ m.tmap.Lambda(theta)).toarray()
    M = ZL.T @ (w[:, None] * ZL) + np.eye(ZL.shape[1])
    dense = np.einsum("ij,ij->i", ZL @ np.linalg.inv(M), ZL)
    assert dense.max() > 0.1
    np.testing.assert_allclose(h, dense, rtol=0, atol=1e-12)


def central(f, x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    out = np.empty(len(x))
    for j in range(len(x)):
        e = np.zeros(len(x))
        e[j] = h
        out[j] = (f(x + e) - f(x - e)) / (2 * h)
    return out


@CASES
@pytest.mark.parametrize("beta_free", [False, True], ids=["nAGQ0", "joint"])
def test_gradient_matches_central_differences(case, beta_free: bool) -> None:
    m = model(case)
    m.pirls_tol = 1e-14
    theta = theta_at(m)
    if beta_free:
        m.laplace(theta)
        x = np.concatenate([theta, m.state.beta + 0.05])  # off beta's optimum
        nt = len(theta)
        value, g = m.laplace_gradient(x[:nt], x[nt:])
        fd = central(lambda z: m.laplace(z[:nt], z[nt:]), x)
    else:
        value, g = m.laplace_gradient(theta)
        fd = central(m.laplace, theta)
    assert np.isfinite(value)
    scale = np.max(np.abs(fd))
    assert scale > 1.0
    np.testing.assert_allclose(g, fd, rtol=0, atol=1e-6 * scale)


def test_gradient_is_not_offered_for_a_non_canonical_link() -> None:
    m = model(VERBAGG, "probit")
    assert m.leverages is None
    with pytest.raises(NoGradient):
        m.laplace_gradient(theta_at(m))
    fit = m.fit()  # BOBYQA throughout
    assert fit.result.diagnostics.optimizer.startswith("BOBYQA")


def test_gradient_refuses_a_nearly_singular_vector_term() -> None:
    m = model(VECTOR)
    theta = theta_at(m)
    theta[3] = 1e-9  # T_item's second diagonal: its inverse does not exist in practice
    with pytest.raises(NoGradient):
        m.laplace_gradient(theta)


def test_gradient_from_a_single_precision_inverse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above SINGLE_FROM the optimizer's gradients use S^-1 in single precision (to
    about 1e-4 relative, said the probe); the checks switch to double."""
    monkeypatch.setattr(factor_module, "SINGLE_FROM", 10)  # VerbAgg's items: 24 columns
    m = model(VERBAGG)
    m.pirls_tol = 1e-14
    theta = theta_at(m)
    _, single = m.laplace_gradient(theta)
    m.pls.factor.allow_single_precision(False)
    m._last = None  # evaluate again
    _, double = m.laplace_gradient(theta)
    assert not np.array_equal(single, double)
    np.testing.assert_allclose(single, double, rtol=0, atol=1e-4 * np.max(np.abs(double)))
    np.testing.assert_allclose(
        double, central(m.laplace, theta), atol=1e-6 * np.max(np.abs(double))
    )


NO_FIXED = ("TICKS ~ 0 + (1 | BROOD) + (1 | LOCATION)", "grouseticks", "poisson")


@pytest.mark.parametrize(
    "case", [VERBAGG, GROUSE, VECTOR, NO_FIXED], ids=["VerbAgg", "grouseticks", "vector", "p=0"]
)
def test_fit_with_the_gradient_matches_the_derivative_free_fit(case) -> None:
    fits, calls = [], []
    for use_gradient in (True, False):
        m = model(case)
        count = [0]
        laplace = m.laplace

        def counted(*args, _f=laplace, _n=count):
            _n[0] += 1
            return _f(*args)

        m.laplace = counted  # type: ignore[method-assign]
        fits.append(m.fit(solver.Control(use_gradient=use_gradient)).result)
        calls.append(count[0])
    grad, free = fits
    assert grad.loglik == pytest.approx(free.loglik, rel=1e-9)
    for a, b in zip(grad.fixed_effects, free.fixed_effects):
        assert a.estimate == pytest.approx(b.estimate, rel=1e-4, abs=1e-5)
        assert a.std_error == pytest.approx(b.std_error, rel=1e-3)
    for a, b in zip(grad.variance_components, free.variance_components):
        assert (a.sd or 0.0) == pytest.approx(b.sd or 0.0, rel=1e-4, abs=1e-5)
        assert (a.corr or 0.0) == pytest.approx(b.corr or 0.0, rel=1e-3, abs=1e-4)
    assert calls[0] < calls[1] / 2  # the point of it: 43 vs 150, 63 vs 339 here


def test_hessian_from_central_differences_of_the_gradient_is_second_order() -> None:
    from sparsemm.solver.optimize import derivatives_from_gradient

    A = np.array([[3.0, 1.0], [1.0, 2.0]])

    def grad(x: np.ndarray) -> np.ndarray:  # of x'Ax/2 + x_0^3 / 6
        return A @ x + np.array([x[0] ** 2 / 2, 0.0])

    x = np.array([0.5, -1.0])
    exact = A + np.diag([x[0], 0.0])
    steps = np.array([1e-2, 2e-2])
    _, forward = derivatives_from_gradient(grad, x, steps)
    g0, central = derivatives_from_gradient(grad, x, steps, central=True)
    np.testing.assert_allclose(g0, grad(x))
    assert abs(forward[0, 0] - exact[0, 0]) == pytest.approx(5e-3, rel=1e-6)  # h / 2
    np.testing.assert_allclose(central, exact, atol=1e-12)


def test_a_singular_fit_goes_on_by_bobyqa_and_matches_the_derivative_free_fit() -> None:
    """A crossed factor with no variance: the log-scale searches stop near theta = 0,
    BOBYQA finishes on the theta scale, and both paths agree (-2 logLik to 1e-9)."""
    import pyarrow as pa

    rng = np.random.default_rng(5)
    n = 4000
    a, b, x = rng.integers(0, 400, n), rng.integers(0, 30, n), rng.normal(size=n)
    eta = -0.5 + 0.8 * x + rng.normal(0, 0.9, 400)[a]
    rng.normal(0, 1, 30)  # b's effects, drawn and not used: its variance is 0
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    table = pa.table({"y": y, "x": x, "a": a.astype(str), "b": b.astype(str)})
    results = []
    for use_gradient in (True, False):
        data = solver.prepare("y ~ x + (1 | a) + (1 | b)", table, family="binomial")
        m = solver.GeneralizedLinearMixedModel(data, solver.family("binomial"))
        results.append(m.fit(solver.Control(use_gradient=use_gradient)).result)
    grad, free = results
    assert "then BOBYQA (nAGQ = 1)" in grad.diagnostics.optimizer
    assert grad.singular and free.singular
    assert grad.loglik == pytest.approx(free.loglik, rel=1e-9)
    np.testing.assert_allclose(grad.theta, free.theta, atol=1e-4)


def test_the_fit_times_its_laplace_evaluations() -> None:
    m = model(GROUSE)
    fit = m.fit()
    assert len(fit.evaluation_s) >= fit.result.diagnostics.evaluations > 0
    assert all(t > 0 for t in fit.evaluation_s)
    assert sum(fit.evaluation_s) <= fit.fit_s
