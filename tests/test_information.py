"""The average information (Newton's Hessian for LMMs) against its dense definition, and
Newton's method against L-BFGS-B."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sparsemm import solver
from sparsemm.solver.crossprod import z_matrix
from sparsemm.solver.information import average_information
from sparsemm.solver.lmm import LinearMixedModel
from sparsemm.solver.model import concat_rows
from sparsemm.solver.optimize import Control

HERE = Path(__file__).parent
CASES = {c["name"]: c for c in json.loads((HERE / "golden" / "lme4_golden.json").read_text())}
NAMES = ["sleepstudy_reml", "sleepstudy_ml", "sleepstudy_weights", "sleepstudy_uncorr",
         "pastes", "penicillin", "cake_quadratic"]  # fmt: skip


def _model(name: str) -> LinearMixedModel:
    case = CASES[name]
    data = solver.prepare(
        case["formula"], str(HERE / "data" / f"{case['dataset']}.parquet"), weights=case["weights"]
    )
    return LinearMixedModel(data, reml=case["REML"])


def _dense_information(model: LinearMixedModel, theta: np.ndarray) -> np.ndarray:
    """t_a'P t_b over (theta, sigma^2) from V, P and t_a = V_a P y built densely, then
    the Schur complement of sigma^2 (the module docstring's definition)."""
    data = model.data
    rows = concat_rows(list(data.rows()))
    Z = z_matrix(rows, data.layout).toarray()
    X, y = rows.X[:, data.kept], rows.y
    w = np.ones(len(y)) if rows.w is None else rows.w
    sol = model.solve(theta)
    sigma2 = model.criterion.sigma2(sol)
    tmap = model.tmap
    Lam = tmap.Lambda(theta).toarray()
    V = sigma2 * (Z @ Lam @ Lam.T @ Z.T + np.diag(1.0 / w))
    Vi = np.linalg.inv(V)
    P = Vi - Vi @ X @ np.linalg.solve(X.T @ Vi @ X, X.T @ Vi) if X.shape[1] else Vi
    Py = P @ y
    t = []
    for j in range(len(theta)):
        Lj = tmap.Lambda(np.eye(len(theta))[j]).toarray()  # Lambda is linear in theta
        t.append(sigma2 * Z @ (Lj @ Lam.T + Lam @ Lj.T) @ Z.T @ Py)
    t.append(V @ Py / sigma2)
    T = np.column_stack(t)
    AI = T.T @ P @ T
    return AI[:-1, :-1] - np.outer(AI[:-1, -1], AI[-1, :-1]) / AI[-1, -1]


@pytest.mark.parametrize("name", NAMES)
def test_average_information_matches_dense_definition(name: str) -> None:
    model = _model(name)
    theta = np.atleast_1d(np.asarray(CASES[name]["theta"], dtype=float))
    for point in (theta, 1.3 * theta + 0.05):
        H = average_information(model.pls, model.criterion, model.solve(point))
        expected = _dense_information(model, point)
        np.testing.assert_allclose(H, expected, rtol=1e-7, atol=1e-9 * np.abs(expected).max())
        assert np.linalg.eigvalsh(H).min() >= -1e-9 * np.abs(H).max()  # semi-definite


@pytest.mark.parametrize("name", ["sleepstudy_reml", "sleepstudy_ml", "penicillin", "pastes"])
def test_newton_reaches_the_lbfgs_optimum(name: str) -> None:
    newton = _model(name).fit()
    lbfgs = _model(name).fit(Control(newton=False))
    assert newton.result.diagnostics.optimizer.startswith("Newton")
    assert lbfgs.result.diagnostics.optimizer.startswith("L-BFGS-B")
    np.testing.assert_allclose(newton.sol.theta, lbfgs.sol.theta, rtol=2e-6, atol=1e-8)
    crit = newton.model.criterion
    assert crit(newton.sol) == pytest.approx(crit(lbfgs.sol), rel=1e-10)
    assert crit(newton.sol) <= crit(lbfgs.sol) + 1e-8


def test_newton_takes_fewer_evaluations_on_insteval() -> None:
    formula = "y ~ service + (1 | s) + (1 | d) + (1 | dept:service)"
    data = solver.prepare(formula, str(HERE / "data" / "InstEval.parquet"))
    newton = LinearMixedModel(data).fit()
    lbfgs = LinearMixedModel(data).fit(Control(newton=False))
    np.testing.assert_allclose(newton.sol.theta, lbfgs.sol.theta, rtol=1e-6)
    # 4 Newton points, 2 gradients for the Hessian (the last step stands for a third), polish
    assert len(newton.evaluation_s) <= 7 < len(lbfgs.evaluation_s)
    assert newton.result.diagnostics.checks[0].code == "gradient"


def test_singular_fit_goes_on_from_newton() -> None:
    fit = _model("dyestuff2").fit()
    assert "then" in fit.result.diagnostics.optimizer
    assert fit.sol.theta[0] == pytest.approx(0.0, abs=1e-4)
