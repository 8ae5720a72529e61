"""Numerical derivatives by Richardson extrapolation, step for step as R's numDeriv.

Central differences with steps h_0, h_0/2, h_0/4, h_0/8 (r = 4, v = 2), then r - 1 rounds
of extrapolation, A_k <- (4^m A_{k+1} - A_k) / (4^m - 1) for m = 1..r-1, which cancel the
h^2, h^4, h^6 error terms.  The first step is

    h_0 = d |x| + eps [|x| < zero_tol],   eps = 1e-4, zero_tol = sqrt(2.2e-16 / 7e-7)

with d = 1e-4 for ``jacobian`` and d = 0.1 for ``hessian`` (numDeriv's defaults).  The
Hessian is numDeriv's ``genD``: the diagonal from (f(x + h e_i) - 2 f(x) + f(x - h e_i)) / h^2,
the off-diagonal from the second difference along e_i + e_j less the two diagonal terms,
divided by 2 h_i h_j.  Following numDeriv exactly (rather than a better scheme) is what
lets lmerTest's Satterthwaite degrees of freedom, which use these derivatives, be
reproduced closely.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

R = 4
EPS = 1e-4
ZERO_TOL = float(np.sqrt(np.finfo(float).eps / 7e-7))


def first_steps(x: np.ndarray, d: float) -> np.ndarray:
    return d * np.abs(x) + EPS * (np.abs(x) < ZERO_TOL)


def extrapolate(approx: np.ndarray) -> np.ndarray:
    """Richardson extrapolation over the first axis (approximations for h_0 .. h_0/8)."""
    a = np.array(approx, dtype=float)
    for m in range(1, len(a)):
        a = (a[1:] * 4.0**m - a[:-1]) / (4.0**m - 1.0)
    return a[0]


def jacobian(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, d: float = 1e-4) -> np.ndarray:
    """d f / d x (len(f) x len(x)), numDeriv::jacobian(method = "Richardson")."""
    x = np.asarray(x, dtype=float)
    cols = []
    for i in range(len(x)):
        approx = []
        h = first_steps(x, d)
        for _ in range(R):
            e = np.zeros_like(x)
            e[i] = h[i]
            approx.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2.0 * h[i]))
            h = h / 2.0
        cols.append(extrapolate(np.array(approx)))
    return np.column_stack(cols)


def hessian(f: Callable[[np.ndarray], float], x: np.ndarray, d: float = 0.1) -> np.ndarray:
    """Hessian of a scalar f, numDeriv::hessian(method = "Richardson") via genD."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    f0 = f(x)
    h0 = first_steps(x, d)
    H = np.zeros((n, n))
    for i in range(n):
        H[i, i] = extrapolate(np.array(
            [(f(x + _unit(n, i) * h) - 2.0 * f0 + f(x - _unit(n, i) * h)) / h[i] ** 2
             for h in _steps(h0)]
        ))  # fmt: skip
    for i in range(n):
        for j in range(i):
            H[i, j] = H[j, i] = extrapolate(np.array([
                _mixed(f, x, f0, h, i, j, H[i, i], H[j, j]) for h in _steps(h0)
            ]))  # fmt: skip
    return H


def _mixed(f, x, f0, h, i, j, hii, hjj) -> float:
    step = _unit(len(x), i) * h + _unit(len(x), j) * h
    second = f(x + step) - 2.0 * f0 + f(x - step)
    return (second - hii * h[i] ** 2 - hjj * h[j] ** 2) / (2.0 * h[i] * h[j])


def _steps(h0: np.ndarray) -> list[np.ndarray]:
    return [h0 / 2.0**k for k in range(R)]


def _unit(n: int, i: int) -> np.ndarray:
    e = np.zeros(n)
    e[i] = 1.0
    return e
