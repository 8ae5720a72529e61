"""Newton's method on the log scale of theta, with a Hessian the model supplies.

Over y (y_j = log x_j for the diagonal elements of the T_k, y_j = x_j off the
diagonal; ``optimize.to_log``), with g and H the gradient and Hessian in x and
D = diag(x_j where diagonal, 1 elsewhere):

    g_y = D g,     H_y = D H D + diag(g_y on the diagonal elements)     (chain rule)
    step = -H_y^-1 g_y,   at most RADIUS long in each y_j,  halved (x 1/4) until
    f(y + t step) <= f(y) + ARMIJO t g_y'step
    stop when the predicted decrease -g_y'step / 2 <= tol (``Control.newton_tol``), or
    when a step that f rejects would lower it by less than its rounding error

The predicted decrease is half the squared norm of lme4's scaled gradient (g'H^-1 g
with the Cholesky factor of H), so a tol well below tol_grad^2 / 2 leaves the
convergence check nothing to do.

For LMMs H is the average information (``information``): near the optimum it is the
observed Hessian to a few per cent, so each step cuts the error in y by about that
factor (InstEval: 5 steps from lme4's start, where L-BFGS-B takes 14 evaluations).
Where H_y is not positive definite the chain term is dropped (D H D is positive
semi-definite for an AI matrix), then a ridge is added.  A search that cannot go down,
runs out of iterations or heads for theta_j = 0 (a singular fit) returns its best
point with a status that says so, for the caller's fallback.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .optimize import (
    LOG_FLOOR,
    Control,
    Objective,
    ObjectiveGrad,
    OptimResult,
    Progress,
    counted,
    from_log,
    to_log,
)

Hessian = Callable[[np.ndarray], np.ndarray]

RADIUS = 3.0  # largest change of one y_j per step (a factor e^3 ~ 20 in theta_j)
ARMIJO = 1e-4
MAX_ITERATIONS = 50
BACKTRACKS = 6
ROUNDING = 1e-11  # relative change of f below which its rounding may hide a decrease
BOUNDARY_FROM = 5e-4  # a diagonal theta_j below this (times the largest) heads for 0
CONVERGED = "converged"
BOUNDARY = "heading for the boundary"


def minimize_newton(
    f: Objective,
    fg: ObjectiveGrad,
    hess: Hessian,
    x0: np.ndarray,
    diagonal: np.ndarray,
    control: Control = Control(),
    progress: Progress | None = None,
) -> OptimResult:
    """Minimize f from x0 by Newton steps on the log scale (module docstring): each
    point costs f, accepted ones then fg (a memoizing objective makes that its gradient
    only) and hess."""
    trace: list[float] = []
    f = counted(f, progress, trace)
    x = np.asarray(x0, dtype=np.float64)
    value = f(x)
    _, g = fg(x)
    for _ in range(MAX_ITERATIONS):
        if not np.isfinite(value) or _near_zero(x, diagonal):
            return OptimResult(x, value, len(trace), BOUNDARY, trace)
        y = to_log(x, diagonal)
        g_y, DHD, chain = _log_scale(x, g, hess(x), diagonal)
        step = _descent(g_y, DHD, chain)
        if step is None:
            return OptimResult(x, value, len(trace), "no positive definite Hessian", trace)
        slope = float(g_y @ step)
        if -slope / 2 <= control.newton_tol:
            return OptimResult(x, value, len(trace), CONVERGED, trace)
        t = min(1.0, RADIUS / float(np.max(np.abs(step))))
        for _ in range(BACKTRACKS):
            trial = from_log(y + t * step, diagonal)
            trial_value = f(trial)
            if trial_value <= value + ARMIJO * t * slope:
                break
            if -slope * t <= ROUNDING * max(1.0, abs(value)):  # f cannot tell: done
                return OptimResult(x, value, len(trace), CONVERGED, trace)
            t /= 4
        else:
            return OptimResult(x, value, len(trace), "Newton step could not go down", trace)
        x, value = trial, trial_value
        _, g = fg(x)
    return OptimResult(x, value, len(trace), "maximum number of Newton steps", trace)


def _log_scale(
    x: np.ndarray, g: np.ndarray, H: np.ndarray, diagonal: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """g_y, D H D and the chain term's diagonal (module docstring)."""
    d = np.where(diagonal, x, 1.0)
    g_y = d * g
    return g_y, d[:, None] * H * d[None, :], np.where(diagonal, g_y, 0.0)


def _descent(g_y: np.ndarray, DHD: np.ndarray, chain: np.ndarray) -> np.ndarray | None:
    """-H_y^-1 g_y with H_y = DHD + diag(chain); where that is not positive definite
    DHD alone, then DHD with a ridge; None if none is."""
    ridge = 1e-8 * (float(np.max(np.abs(np.diag(DHD)), initial=0.0)) or 1.0)
    for H in (DHD + np.diag(chain), DHD, DHD + ridge * np.eye(len(g_y))):
        try:
            c = np.linalg.cholesky(H)
        except np.linalg.LinAlgError:
            continue
        return -np.linalg.solve(c.T, np.linalg.solve(c, g_y))
    return None


def _near_zero(x: np.ndarray, diagonal: np.ndarray) -> bool:
    """A diagonal theta_j small against the largest (or at the log scale's floor): the
    optimum may be on the boundary, where steps on the log scale shrink forever."""
    if not diagonal.any():
        return False
    top = max(1.0, float(np.max(x[diagonal])))
    small = x[diagonal] < BOUNDARY_FROM * top
    return bool(small.any() or np.any(x[diagonal] <= LOG_FLOOR * 10))
