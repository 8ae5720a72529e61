"""Minimising the profiled objective over theta, and checking the optimum as lme4 does.

Optimizers are plug-ins with one signature ``(f, x0, lower, control, progress)``:
BOBYQA (NLopt, as lme4's default ``nloptwrap``) for two or more parameters, a
bounded Brent search for one (Powell's BOBYQA needs at least two).

Convergence checks follow lme4's ``checkConv`` on the parameters not at a bound:
central finite differences (step ``delta``) give the gradient g and Hessian H;

    scaled gradient   s = H^-1/2-ish: solve(chol(H), g);  max(min(|s|, |g|)) < tol_grad
    Hessian           eigenvalues of H all > -tol_hess, and min/max ratio not tiny
    singular fit      some diagonal element of some T_k below tol_singular
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import nlopt
import numpy as np
import scipy.linalg as la
from scipy.optimize import minimize as scipy_minimize
from scipy.optimize import minimize_scalar

Objective = Callable[[np.ndarray], float]
ObjectiveGrad = Callable[[np.ndarray], tuple[float, np.ndarray]]
Progress = Callable[[int, float], None]


@dataclass(frozen=True)
class Diagnostic:
    """One finding about a fit: data, not prose in a warning."""

    code: str
    severity: str  # "info" | "warning" | "error"
    message: str
    value: float | None = None
    tolerance: float | None = None


@dataclass(frozen=True)
class Control:
    """What the optimizer and the checks use (lme4's lmerControl, in part)."""

    ftol_abs: float = 1e-10
    xtol_abs: float = 1e-10
    ftol_rel: float = 0.0
    xtol_rel: float = 0.0
    maxeval: int = 100_000
    tol_grad: float = 2e-3
    tol_hess: float = 1e-6
    tol_singular: float = 1e-4
    delta: float = 1e-4
    check_derivatives: bool = True
    use_gradient: bool = True
    newton_steps: int = 3  # when the scaled gradient is above tol_grad after the optimizer
    gtol: float = 1e-3  # then a Newton step from the check's derivatives
    # L-BFGS-B stops when an iteration lowers f by less than this relative amount: near
    # 1e-12 the decrease is the objective's rounding noise (EHR 1M: 5e-12 at the optimum,
    # where the line search then spent 6 evaluations finding no decrease)
    lbfgs_ftol: float = 1e-11
    initial_step: float | None = None  # BOBYQA's first trust radius (None: NLopt's choice)
    # Newton's method (LMMs, ``newton``) stops when its next step would lower f by less
    # than this: lme4's scaled gradient then has norm sqrt(2e-7) ~ tol_grad / 4.5
    newton_tol: float = 1e-7
    newton: bool = True  # LMMs: Newton's method where the average information is offered


@dataclass(frozen=True)
class OptimResult:
    x: np.ndarray
    fun: float
    evaluations: int
    status: str
    trace: list[float] = field(default_factory=list)


def counted(f: Objective, progress: Progress | None, trace: list[float]) -> Objective:
    def wrapped(x: np.ndarray) -> float:
        value = float(f(np.asarray(x, dtype=np.float64)))
        trace.append(value)
        if progress is not None:
            progress(len(trace), value)
        return value

    return wrapped


def minimize(
    f: Objective,
    x0: np.ndarray,
    lower: np.ndarray,
    control: Control = Control(),
    progress: Progress | None = None,
    fg: ObjectiveGrad | None = None,
) -> OptimResult:
    """Minimise ``f`` from ``x0`` subject to ``x >= lower``; with ``fg`` (value and
    gradient) by L-BFGS-B, else by BOBYQA (Brent for one parameter)."""
    trace: list[float] = []
    if fg is not None and control.use_gradient:
        x, status = _lbfgsb(_counted_fg(fg, progress, trace), x0, lower, control)
    elif len(x0) == 1:
        x, status = _brent(counted(f, progress, trace), float(x0[0]), float(lower[0]), control)
    else:
        x, status = _bobyqa(counted(f, progress, trace), x0, lower, control)
    return OptimResult(x, float(f(x)), len(trace), status, trace)


LOG_FLOOR = 1e-6  # smallest diagonal theta reached on the log scale


def minimize_log_scale(
    fg: ObjectiveGrad,
    x0: np.ndarray,
    diagonal: np.ndarray,
    control: Control = Control(),
    progress: Progress | None = None,
) -> OptimResult:
    """L-BFGS-B over phi, with theta_j = exp(phi_j) for the diagonal elements of the T_k
    (bounded below by 0) and theta_j = phi_j off the diagonal:

        d f / d phi_j = theta_j  d f / d theta_j          (diagonal j)

    Variance parameters act multiplicatively, so on the log scale the curvature is far
    more even across terms: 11-16 evaluations instead of 19-24 on lme4's golden and
    InstEval models, 26 instead of 47 on the synthetic EHR model.  phi stops at
    log(LOG_FLOOR): a boundary (singular) optimum is for the caller to finish on the
    theta scale."""
    trace: list[float] = []
    fg_phi = _log_scaled(_counted_fg(fg, progress, trace), diagonal)
    lower = np.where(diagonal, np.log(LOG_FLOOR), -np.inf)
    phi, status = _lbfgsb(fg_phi, to_log(x0, diagonal), lower, control)
    x = from_log(phi, diagonal)
    value, _ = fg(x)
    return OptimResult(x, float(value), len(trace), status, trace)


def stalled_near_zero(fg, x: np.ndarray, diagonal: np.ndarray, gtol: float) -> bool:
    """Whether a small diagonal theta_j still has a gradient above ``gtol`` on the theta
    scale: the log scale damps it by theta_j, so a theta_j heading for the boundary stops
    early there (elsewhere the log-scale optimum stands; the checks refine it)."""
    _, grad = fg(x)
    small = diagonal & (x < NEAR_ZERO * max(1.0, float(np.max(x[diagonal], initial=0.0))))
    return bool(np.any(np.abs(grad[small]) > gtol))


NEAR_ZERO = 0.05  # relative to the largest diagonal theta


def combined(first: OptimResult, then: OptimResult) -> OptimResult:
    """The better of two searches, counting the evaluations of both."""
    best = then if then.fun <= first.fun else first
    return replace(best, evaluations=first.evaluations + then.evaluations)


NEWTON_RADIUS = 4.0  # longest first Newton step of ``minimize_preconditioned`` (z units)


def minimize_preconditioned(
    fg: ObjectiveGrad,
    x0: np.ndarray,
    diagonal: np.ndarray,
    steps: np.ndarray,
    control: Control = Control(),
    progress: Progress | None = None,
) -> OptimResult | None:
    """Quasi-Newton over y (log x_j where ``diagonal``, floored at log(LOG_FLOOR); x_j
    elsewhere) in the units z = C (y - y0), C'C = H0 the Hessian at y0 by forward
    differences of the gradient (``steps`` in y): there the curvature is about I from
    the start, however strongly the parameters are coupled.  A Newton step first (z =
    -C^-T g, at most NEWTON_RADIUS long), kept if it goes down, then L-BFGS.  None when
    a diagonal x_j starts at its floor (a boundary: for BOBYQA), H0 is not positive
    definite or the search ends where f is not finite."""
    if np.any(x0[diagonal] <= LOG_FLOOR * (1 + 1e-8)):
        return None
    y0 = to_log(x0, diagonal)
    trace: list[float] = []
    fy = _memo_fg(_log_scaled(_counted_fg(fg, progress, trace), diagonal))
    f0, g0 = fy(y0)
    _, H0 = derivatives_from_gradient(lambda y: fy(y)[1], y0, steps)
    try:
        C = np.linalg.cholesky(H0).T
    except np.linalg.LinAlgError:
        return None

    def fz(z: np.ndarray) -> tuple[float, np.ndarray]:
        value, g = fy(y0 + la.solve_triangular(C, z))
        return value, la.solve_triangular(C, g, trans="T")

    newton = -la.solve_triangular(C, g0, trans="T")
    newton *= min(1.0, NEWTON_RADIUS / max(float(np.linalg.norm(newton)), 1e-300))
    z0 = newton if fz(newton)[0] < f0 else np.zeros(len(x0))
    z, status = _lbfgsb(fz, z0, np.full(len(x0), -np.inf), control)
    value, _ = fz(z)
    if not np.isfinite(value):
        return None
    x = from_log(y0 + la.solve_triangular(C, z), diagonal)
    return OptimResult(x, value, len(trace), status, trace)


def to_log(x: np.ndarray, diagonal: np.ndarray) -> np.ndarray:
    """y = log x_j where ``diagonal`` (x_j at least LOG_FLOOR), x_j elsewhere."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(diagonal, np.log(np.maximum(x, LOG_FLOOR)), x)


def from_log(y: np.ndarray, diagonal: np.ndarray) -> np.ndarray:
    """x = exp(y_j) where ``diagonal`` (y_j clipped to [log(LOG_FLOOR), 700]), y_j
    elsewhere."""
    return np.where(diagonal, np.exp(np.clip(y, np.log(LOG_FLOOR), 700.0)), y)


def _log_scaled(fg: ObjectiveGrad, diagonal: np.ndarray) -> ObjectiveGrad:
    """fg over y (``from_log``): df/dy_j = x_j df/dx_j where ``diagonal``, 0 where y_j
    is clipped below (f is flat there)."""
    floor = np.log(LOG_FLOOR)

    def fy(y: np.ndarray) -> tuple[float, np.ndarray]:
        x = from_log(y, diagonal)
        value, g = fg(x)
        return value, np.where(diagonal, np.where(y < floor, 0.0, g * x), g)

    return fy


def _memo_fg(fg: ObjectiveGrad, size: int = 4) -> ObjectiveGrad:
    """fg remembering its last ``size`` points (a rejected Newton trial, then L-BFGS
    starting again from y0, asks for y0 a second time)."""
    seen: dict[bytes, tuple[float, np.ndarray]] = {}

    def cached(y: np.ndarray) -> tuple[float, np.ndarray]:
        key = np.asarray(y, np.float64).tobytes()
        if key not in seen:
            if len(seen) >= size:
                del seen[next(iter(seen))]
            seen[key] = fg(y)
        value, g = seen[key]
        return value, g.copy()

    return cached


def _counted_fg(fg: ObjectiveGrad, progress: Progress | None, trace: list[float]) -> ObjectiveGrad:
    def wrapped(x: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = fg(np.asarray(x, dtype=np.float64))
        trace.append(value)
        if progress is not None:
            progress(len(trace), value)
        return value, grad

    return wrapped


def _lbfgsb(fg: ObjectiveGrad, x0: np.ndarray, lower: np.ndarray, control: Control):
    bounds = [(lo if np.isfinite(lo) else None, None) for lo in lower]
    res = scipy_minimize(
        fg, np.asarray(x0, float), jac=True, method="L-BFGS-B", bounds=bounds,
        options={
            "ftol": control.lbfgs_ftol, "gtol": control.gtol, "maxiter": 10_000, "maxcor": 20,
        },
    )  # fmt: skip
    status = "converged" if res.success else f"L-BFGS-B: {res.message}"
    if "ABNORMAL" in str(res.message):
        status = "converged (line search could not improve further)"
    return np.asarray(res.x), status


def _bobyqa(f: Objective, x0: np.ndarray, lower: np.ndarray, control: Control):
    opt = nlopt.opt(nlopt.LN_BOBYQA, len(x0))
    opt.set_lower_bounds(lower.tolist())
    opt.set_ftol_abs(control.ftol_abs)
    opt.set_xtol_abs(control.xtol_abs)
    opt.set_ftol_rel(control.ftol_rel)
    opt.set_xtol_rel(control.xtol_rel)
    opt.set_maxeval(control.maxeval)
    if control.initial_step is not None:
        opt.set_initial_step(control.initial_step)
    best_x, best_f = [np.asarray(x0, float)], [np.inf]

    def tracked(x: np.ndarray, grad: np.ndarray) -> float:
        value = f(x)
        if value < best_f[0]:
            best_x[0], best_f[0] = np.array(x), value
        return value

    opt.set_min_objective(tracked)
    try:
        x = np.asarray(opt.optimize(np.asarray(x0, float)))
        status = _NLOPT_STATUS.get(opt.last_optimize_result(), "converged")
    except nlopt.RoundoffLimited:
        x, status = best_x[0], "converged (roundoff-limited)"
    return x, status


_NLOPT_STATUS = {nlopt.MAXEVAL_REACHED: "maximum number of evaluations reached"}


def _brent(f: Objective, x0: float, lower: float, control: Control):
    upper = max(4.0 * abs(x0), 10.0)
    while f(np.array([upper])) < f(np.array([upper / 2])) and upper < 1e8:
        upper *= 4.0
    res = minimize_scalar(
        lambda t: f(np.array([t])),
        bounds=(lower, upper),
        method="bounded",
        options={"xatol": control.xtol_abs, "maxiter": 10_000},
    )
    status = "converged" if res.success else str(res.message)
    return np.array([res.x]), status


def derivatives_from_gradient(
    g: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    delta: Steps,
    central: bool = False,
    near: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """The gradient at ``x`` and the Hessian by forward differences of the gradient
    (n + 1 gradients instead of lme4's 2n^2 + 1 objective values), or by central ones
    (2n + 1, error O(delta^2) instead of O(delta)).

    Forward differences may take one step from ``near``, gradients already known at
    other points (the optimizer's last accepted point): a step s = x' - x whose largest
    component relative to delta, s_i / delta_i, is between 1/NEAR_STEP and NEAR_STEP
    replaces the step along coordinate i.  With the steps as the columns of D and the
    gradient differences as those of Y, H D = Y: H = Y D^-1, symmetrized (D is the
    diagonal of the steps with column i replaced by s, and s_i the largest entry of
    D^-1 s: well conditioned)."""
    n = len(x)
    d = np.broadcast_to(np.asarray(delta, float), x.shape)
    g0 = g(x)
    steps, diffs = np.diag(d).copy(), np.zeros((n, n))
    known = None if central else _known_step(x, d, near)
    for i in range(n):
        if known is not None and i == known[0]:
            steps[:, i], diffs[:, i] = known[1], known[2] - g0
            continue
        e = np.zeros(n)
        e[i] = d[i]
        if central:
            steps[i, i] = 2.0 * d[i]
            diffs[:, i] = g(x + e) - g(x - e)
        else:
            diffs[:, i] = g(x + e) - g0
    hess = np.linalg.solve(steps.T, diffs.T).T  # Y D^-1
    return g0, (hess + hess.T) / 2


NEAR_STEP = 4.0  # a known gradient's step may be this much longer or shorter than delta


def _known_step(
    x: np.ndarray, d: np.ndarray, near: Sequence[tuple[np.ndarray, np.ndarray]]
) -> tuple[int, np.ndarray, np.ndarray] | None:
    """(coordinate, step, gradient) of the first point of ``near`` whose step from x
    can stand for a difference step (``derivatives_from_gradient``), or None."""
    for xk, gk in near:
        s = np.asarray(xk, float) - x
        ratio = np.abs(s) / d
        i = int(np.argmax(ratio))
        if 1.0 / NEAR_STEP <= ratio[i] <= NEAR_STEP:
            return i, s, np.asarray(gk, float)
    return None


Steps = float | np.ndarray  # one step for all coordinates, or one per coordinate


def central_gradient(f: Objective, x: np.ndarray, delta: Steps) -> np.ndarray:
    """Central finite-difference gradient (2n evaluations)."""
    d = np.broadcast_to(np.asarray(delta, float), x.shape)
    out = np.empty(len(x))
    for i in range(len(x)):
        e = np.zeros(len(x))
        e[i] = d[i]
        out[i] = (f(x + e) - f(x - e)) / (2 * d[i])
    return out


def derivatives(f: Objective, x: np.ndarray, delta: Steps) -> tuple[np.ndarray, np.ndarray]:
    """Central finite-difference gradient and Hessian of ``f`` at ``x`` (lme4's deriv12)."""
    n = len(x)
    d = np.broadcast_to(np.asarray(delta, float), x.shape)
    f0 = f(x)
    grad, hess = np.zeros(n), np.zeros((n, n))
    plus, minus = np.zeros(n), np.zeros(n)
    for i in range(n):
        e = np.zeros(n)
        e[i] = d[i]
        plus[i], minus[i] = f(x + e), f(x - e)
        grad[i] = (plus[i] - minus[i]) / (2 * d[i])
        hess[i, i] = (plus[i] - 2 * f0 + minus[i]) / d[i] ** 2
    for i in range(n):
        for j in range(i):
            ei, ej = np.zeros(n), np.zeros(n)
            ei[i], ej[j] = d[i], d[j]
            fpp, fmm = f(x + ei + ej), f(x - ei - ej)
            hess[i, j] = hess[j, i] = (
                fpp - plus[i] - plus[j] + 2 * f0 - minus[i] - minus[j] + fmm
            ) / (2 * d[i] * d[j])
    return grad, hess


@dataclass(frozen=True)
class Checked:
    """The checks' findings, the (polished) optimum, and the Hessian over the free
    parameters at the last point the derivatives were taken (None if not taken)."""

    checks: list[Diagnostic]
    x: np.ndarray
    free: np.ndarray | None = None
    hess: np.ndarray | None = None


def check_convergence(
    f: Objective,
    x: np.ndarray,
    lower: np.ndarray,
    diag_mask: np.ndarray,
    control: Control,
    fg: ObjectiveGrad | None = None,
    steps: np.ndarray | None = None,
    central: bool = False,
    near: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> Checked:
    """lme4's checks at the optimum (singular fit, scaled gradient, Hessian), and the
    optimum after a Newton polish from the same derivatives (with ``fg``, the Hessian
    from differences of the gradient, ``central`` ones or forward, which may use the
    gradients ``near`` that are already known: ``derivatives_from_gradient``)."""
    out: list[Diagnostic] = []
    small = diag_mask & (x < control.tol_singular)
    if small.any():
        out.append(
            Diagnostic(
                "singular", "info", "boundary (singular) fit: see help('isSingular')",
                float(np.min(x[diag_mask])), control.tol_singular,
            )
        )  # fmt: skip
    free = ~(x <= lower + control.tol_singular * diag_mask)
    if not control.check_derivatives or not free.any():
        return Checked(out, x)
    xf = x.copy()

    def sub(z: np.ndarray) -> float:
        xf[free] = z
        return f(xf.copy())

    delta: Steps = control.delta if steps is None else steps[free]

    def derive(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if fg is None or not control.use_gradient:
            return derivatives(sub, z, delta)

        def sub_grad(w: np.ndarray) -> np.ndarray:
            xf[free] = w
            return fg(xf.copy())[1][free]

        fixed = [(xk[free], gk[free]) for xk, gk in near if np.array_equal(xk[~free], xf[~free])]
        return derivatives_from_gradient(sub_grad, z, delta, central, fixed)

    def gradient_at(z: np.ndarray) -> np.ndarray:
        if fg is None or not control.use_gradient:
            return central_gradient(sub, z, delta)
        xf[free] = z
        return fg(xf.copy())[1][free]

    x = x.copy()
    grad, hess = derive(x[free])
    for attempt in range(control.newton_steps + 1):
        if attempt:  # after a Newton step the curvature barely moves: new gradient only
            grad = gradient_at(x[free])
        checks = _gradient_check(grad, hess, control) + _hessian_check(hess, control)
        if checks[0].severity == "info" or attempt == control.newton_steps:
            polished = _newton_polish(sub, x, lower, free, grad, hess)
            return Checked(out + checks, polished, free, hess)
        stepped = _newton_step(sub, x, lower, free, grad, hess)
        if stepped is None:
            return Checked(out + checks, x, free, hess)
        x = stepped
    return Checked(out, x)  # not reached


def _newton_step(
    f: Objective,
    x: np.ndarray,
    lower: np.ndarray,
    free: np.ndarray,
    grad: np.ndarray,
    hess: np.ndarray,
) -> np.ndarray | None:
    """A Newton step with backtracking, when the optimizer stopped short of the optimum."""
    step = _newton_direction(grad, hess)
    if step is None:
        return None
    base = f(x[free])
    for t in (1.0, 0.5, 0.25, 0.125):
        trial = x.copy()
        trial[free] = x[free] - t * step
        if np.all(trial >= lower) and f(trial[free]) < base:
            return trial
    return None


def _newton_direction(grad: np.ndarray, hess: np.ndarray) -> np.ndarray | None:
    """H^-1 g where H is positive definite (a descent direction), else None."""
    try:
        np.linalg.cholesky(hess)
        return np.linalg.solve(hess, grad)
    except np.linalg.LinAlgError:
        return None


def _newton_polish(
    f: Objective,
    x: np.ndarray,
    lower: np.ndarray,
    free: np.ndarray,
    grad: np.ndarray,
    hess: np.ndarray,
) -> np.ndarray:
    """One Newton step from the optimizer's answer, kept if it does not go uphill (not
    tried where it is below what the objective resolves).

    BOBYQA stops within its tolerances; the step, from derivatives the checks
    computed anyway, removes most of what is left, so that fits of the same data
    read in another order or batch size agree to ~1e-8 and not just ~1e-6."""
    step = _newton_direction(grad, hess)
    if step is None:
        return x
    trial = x.copy()
    trial[free] = x[free] - step
    size, scale = float(np.max(np.abs(step))), max(1.0, float(np.max(np.abs(x))))
    if np.any(trial < lower) or size > 1e-2 * scale or size < POLISH_FROM * scale:
        return x
    base = f(x[free])
    return trial if f(trial[free]) <= base + 1e-12 * abs(base) else x


POLISH_FROM = 1e-8  # a smaller polishing step is below what the objective resolves


def _gradient_check(grad: np.ndarray, hess: np.ndarray, control: Control) -> list[Diagnostic]:
    try:
        scaled = np.linalg.solve(np.linalg.cholesky(hess).T, grad)
    except np.linalg.LinAlgError:
        return [Diagnostic("gradient", "warning", "unable to evaluate scaled gradient")]
    worst = float(np.max(np.minimum(np.abs(scaled), np.abs(grad))))
    if worst > control.tol_grad:
        msg = f"Model failed to converge with max|grad| = {worst:.6g} (tol = {control.tol_grad})"
        return [Diagnostic("gradient", "warning", msg, worst, control.tol_grad)]
    return [Diagnostic("gradient", "info", "scaled gradient within tolerance", worst,
                       control.tol_grad)]  # fmt: skip


def _hessian_check(hess: np.ndarray, control: Control) -> list[Diagnostic]:
    ev = np.linalg.eigvalsh(hess)
    if ev.min() < -control.tol_hess:
        n_neg = int(np.sum(ev < -control.tol_hess))
        msg = f"Model failed to converge: degenerate Hessian with {n_neg} negative eigenvalues"
        return [Diagnostic("hessian", "warning", msg, float(ev.min()), control.tol_hess)]
    ratio = float(ev.min() / ev.max()) if ev.max() > 0 else 0.0
    if ratio < control.tol_hess:
        msg = "Model is nearly unidentifiable: very large eigenvalue ratio - rescale variables?"
        return [Diagnostic("hessian", "warning", msg, ratio, control.tol_hess)]
    return []
