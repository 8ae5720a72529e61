"""The convergence checks' Hessian from differences of the gradient, with and without a
gradient already known near the optimum (``optimize.derivatives_from_gradient``)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsemm.solver.optimize import derivatives_from_gradient

H = np.array([[4.0, 1.0, -0.5], [1.0, 3.0, 0.25], [-0.5, 0.25, 2.0]])
B = np.array([0.3, -1.0, 0.7])
X = np.array([0.5, 1.5, 0.2])


def _counted_gradient():
    calls: list[np.ndarray] = []

    def g(x: np.ndarray) -> np.ndarray:
        calls.append(x.copy())
        return H @ x + B

    return g, calls


def test_forward_differences_of_a_quadratic_give_its_hessian() -> None:
    g, calls = _counted_gradient()
    g0, hess = derivatives_from_gradient(g, X, 1e-4)
    np.testing.assert_allclose(g0, H @ X + B, rtol=1e-15)
    np.testing.assert_allclose(hess, H, rtol=1e-8, atol=1e-8)
    assert len(calls) == 4


def test_a_known_gradient_near_x_stands_for_one_difference_step() -> None:
    g, calls = _counted_gradient()
    s = np.array([1e-5, -2e-5, 6e-5])  # largest against delta along coordinate 2
    near = [(X, H @ X + B), (X + 1.0, H @ (X + 1.0) + B), (X + s, H @ (X + s) + B)]
    _, hess = derivatives_from_gradient(g, X, 1e-4, near=near)
    np.testing.assert_allclose(hess, H, rtol=1e-8, atol=1e-8)
    assert len(calls) == 3  # x itself and too far a point are passed over
    assert not any(c[2] != X[2] for c in calls[1:])  # no step along coordinate 2


def test_a_known_gradient_too_far_or_central_differences_are_not_used() -> None:
    far = [(X + np.array([0.0, 5e-3, 0.0]), H @ (X + np.array([0.0, 5e-3, 0.0])) + B)]
    g, calls = _counted_gradient()
    _, hess = derivatives_from_gradient(g, X, 1e-4, near=far)
    np.testing.assert_allclose(hess, H, rtol=1e-8, atol=1e-8)
    assert len(calls) == 4
    g, calls = _counted_gradient()
    near = [(X + np.array([0.0, 5e-5, 0.0]), np.full(3, 99.0))]  # (a wrong gradient)
    _, central = derivatives_from_gradient(g, X, 1e-4, central=True, near=near)
    np.testing.assert_allclose(central, H, rtol=1e-8, atol=1e-8)
    assert len(calls) == 7


def test_curvature_from_a_known_step_is_a_difference_quotient() -> None:
    """On a cubic the known step's column carries its own O(step) error, as a difference
    step of that length does: the Hessian agrees with the plain differences to O(delta)."""

    def g(x: np.ndarray) -> np.ndarray:
        return H @ x + B + x**2

    s = np.array([-3e-6, 0.0, 8e-5])
    _, plain = derivatives_from_gradient(g, X, 1e-4)
    _, mixed = derivatives_from_gradient(g, X, 1e-4, near=[(X + s, g(X + s))])
    exact = H + np.diag(2 * X)
    assert np.max(np.abs(mixed - exact)) == pytest.approx(np.max(np.abs(plain - exact)), rel=0.5)
    np.testing.assert_allclose(mixed, exact, atol=3e-4)
