"""Profile-likelihood confidence intervals of an LMM, as lme4's ``confint(method = "profile")``.

The parameters are lme4's (``profile.merMod`` with ``prof.scale = "sdcor"``): per
random-effects term k, in the order of theta (column-major lower triangle of T_k), the
standard deviations and correlations of Sigma_k = sigma^2 T_k T_k',

    sd_i   = sigma |T_i|,          cor_ij = <T_i, T_j> / (|T_i| |T_j|)      (T_i: row i of T_k)

named ``.sig01, .sig02, ...``; then ``.sigma``; then the fixed effects by name.

Like lme4, the profile is of the ML deviance, a REML fit is first refitted by ML
(lme4's ``devfun2`` calls ``refitML``), so REML and ML fits give the same intervals.
With beta profiled out by PLS at theta (``LinearMixedModel.solve``):

    dd(theta, sigma) = logdet_L + pwrss / sigma^2 + n log(2 pi sigma^2) - sum_log_w
    d(theta)         = min_sigma dd = logdet_L + n (1 + log(2 pi pwrss / n)) - sum_log_w

and with beta_j held at b (a reduced model with offset x_j b, as lme4 builds it, has the
same L and the penalized RSS of the full model plus the cost of moving beta_j):

    pwrss_j(theta, b) = pwrss + (b - beta_j)^2 / V_jj,     V = R_X^-1 R_X^-T
    d_j(theta, b)     = logdet_L + n (1 + log(2 pi pwrss_j / n)) - sum_log_w

The profile of a parameter x is D(x) = min of the ML deviance over the others with x
held, and

    zeta(x) = sign(x - x_hat) sqrt(D(x) - D(x_hat)),      interval: zeta = -/+ z,
    z = qnorm((1 + level) / 2).

Each D(x) is a constrained re-optimization (``optimize.minimize``, started from phi
extrapolated linearly from the two nearest points already profiled) over a
parameterization phi of the others:

    sigma = s     phi = theta                          dd(theta, s)
    sd_i  = s     phi = (theta without T_i, w, log(sigma / sigma_hat)),
                  T_i = (s / sigma) w / |w|            dd(theta, sigma)
                  (w: T_i's direction, absent for a term's first row; s = 0 gives T_i = 0)
    cor_ij = r    phi = (theta without T_j, z)         d(theta),
                  T_j = r |z| u + sqrt(1 - r^2) B z,   u = T_i / |T_i|,
                  B an orthonormal basis of u's complement (columns of a Householder
                  reflection, continuous in u), so that |T_j| = |z| and cor_ij = r exactly
    beta_j = b    phi = theta                          d_j(theta, b)

(sigma enters the SD's coordinates on the log scale: it is far better determined than
theta, and sigma -> 0 is no boundary to hit.)  Every phi gives a positive semi-definite
Sigma_k.  lme4 re-optimizes over the SDs and correlations themselves, each correlation
in [-1, 1]; for terms of 3 or more columns that admits correlation matrices that are not
positive definite (its ``safe_chol`` then factors another matrix, whose SDs are not the
ones held), and its profile can turn non-monotonic there: on a 3 x 3 term lme4 put an SD's
lower bound at 0.389 where the valid profile crosses -z at 0.441.

The bounds are the roots of g(x) = zeta(x) -/+ z, found from the estimate (g = -/+ z)
and a first step of about z standard errors by inverse quadratic interpolation through
the three points with the smallest |g|, kept inside the bracket once there is one
(bisection otherwise), until |g| < ZETA_TOL.  lme4 instead interpolates zeta through
its profiled points with splines, which puts its bounds ~1e-6..2e-4 (relative) away from
the roots.  Where zeta does not reach the quantile before a parameter's limit (0 for an
SD, -1/1 for a correlation), the bound is that limit, as lme4 reports it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as la
from scipy import stats

from .errors import InputError
from .factor import limited_blas
from .lmm import LinearMixedModel, LMMFit
from .optimize import Control, minimize
from .pls import PLSSolution, lower_colmajor

Phi = np.ndarray
PhiObjective = Callable[[Phi], float]

# Inner re-optimizations: an error of e in D(x) moves zeta by about e / (2 |zeta|).
INNER_CONTROL = Control(ftol_abs=1e-8, xtol_abs=1e-6, initial_step=0.02)
MAX_ROOT_STEPS = 60
ZETA_TOL = 1e-6  # |zeta - quantile| at a bound: about 1e-6 standard errors in x
LOG_SIGMA_LOWER = -10.0  # log(sigma / sigma_hat): a finite bound for the 1-d Brent search
SINGULAR_NORM = 1e-4  # |T_i| below this: the SD is at its limit 0 (lme4's singular check)
LOWER_DEVIANCE_TOL = 1e-6  # a profiled deviance this far below the fit's is reported


@dataclass(frozen=True)
class ProfileInterval:
    """One row of lme4's confint table; ``estimate`` is at the ML fit."""

    name: str
    estimate: float
    lower: float
    upper: float


@dataclass(frozen=True)
class ProfileTrace:
    """The profiled points of one parameter, sorted by value (zeta = 0 at the estimate)."""

    name: str
    values: tuple[float, ...]
    zeta: tuple[float, ...]


@dataclass(frozen=True)
class ProfileResult:
    level: float
    deviance: float  # the ML deviance at the ML fit, D(x_hat)
    intervals: tuple[ProfileInterval, ...]
    traces: tuple[ProfileTrace, ...]
    evaluations: int  # PLS solves in all re-optimizations
    seconds: float
    messages: tuple[str, ...] = field(default_factory=tuple)

    @property
    def quantile(self) -> float:
        return float(stats.norm.ppf(0.5 + self.level / 2))

    def interval(self, name: str) -> ProfileInterval:
        for row in self.intervals:
            if row.name == name:
                return row
        raise KeyError(name)


# ---- the ML deviance at theta -----------------------------------------------------


class _Deviance:
    """The ML deviance of one model at theta, with sigma or one beta_j held."""

    def __init__(self, model: LinearMixedModel) -> None:
        self.model = model
        self.n = model.criterion.n
        self.sum_log_w = model.criterion.sum_log_w
        self.evaluations = 0

    def solve(self, theta: np.ndarray) -> PLSSolution | None:
        self.evaluations += 1
        try:
            return self.model.solve(theta)
        except np.linalg.LinAlgError:
            return None

    def _profiled(self, logdet_L: float, pwrss: float) -> float:
        n = self.n
        return logdet_L + n * (1.0 + math.log(2.0 * math.pi * pwrss / n)) - self.sum_log_w

    def profiled(self, theta: np.ndarray) -> float:
        """d(theta): sigma and beta profiled out."""
        sol = self.solve(theta)
        return math.inf if sol is None else self._profiled(sol.logdet_L, sol.pwrss)

    def at_sigma(self, theta: np.ndarray, sigma: float) -> float:
        """dd(theta, sigma): beta profiled out, sigma held."""
        sol = self.solve(theta)
        if sol is None or not 0.0 < sigma < math.inf:
            return math.inf
        s2 = sigma * sigma
        return sol.logdet_L + sol.pwrss / s2 + self.n * math.log(2 * math.pi * s2) - self.sum_log_w

    def at_beta(self, theta: np.ndarray, j: int, b: float) -> float:
        """d_j(theta, b): beta_j held at b, the other betas and sigma profiled out."""
        sol = self.solve(theta)
        if sol is None:
            return math.inf
        return self._profiled(sol.logdet_L, sol.pwrss + (b - sol.beta[j]) ** 2 / _vjj(sol, j))


def _vjj(sol: PLSSolution, j: int) -> float:
    """(R_X^-1 R_X^-T)_jj: the squared norm of row j of R_X^-1."""
    RXinv = la.solve_triangular(sol.RX, np.eye(len(sol.beta)))
    return float(RXinv[j] @ RXinv[j])


# ---- the parameters: what is held, and over what the others are re-optimized -------


@dataclass(frozen=True)
class _Param:
    """A profiled parameter: its lme4 name, estimate, limits and first step."""

    name: str
    estimate: float
    lower: float
    upper: float
    step: float  # the scale of a first step away from the estimate
    lower_closed: bool = True  # zeta can be evaluated at ``lower`` (not for sigma)

    def start(self, theta: np.ndarray) -> Phi:
        return np.array(theta, dtype=np.float64)

    def phi_lower(self, theta_lower: np.ndarray) -> np.ndarray:
        return theta_lower

    def objective(self, dev: _Deviance, x: float) -> PhiObjective:
        raise NotImplementedError


@dataclass(frozen=True)
class _Sigma(_Param):
    def objective(self, dev: _Deviance, x: float) -> PhiObjective:
        return lambda theta: dev.at_sigma(theta, x)


@dataclass(frozen=True)
class _Beta(_Param):
    j: int = 0

    def objective(self, dev: _Deviance, x: float) -> PhiObjective:
        return lambda theta: dev.at_beta(theta, self.j, x)


@dataclass(frozen=True)
class _SD(_Param):
    """sd_i of one term: T_i = (x / sigma) w / |w|, over the other rows of theta, the
    direction w of T_i (none for a first row) and log(sigma / sigma_hat)."""

    i: int = 0
    row: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # theta of T_i
    keep: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # theta not in T_i
    sigma: float = 1.0  # sigma_hat, the scale of the log(sigma) coordinate

    def theta_sigma(self, phi: Phi, x: float) -> tuple[np.ndarray, float]:
        nk = int(self.keep.sum())
        theta = np.zeros(len(self.keep))
        theta[self.keep] = phi[:nk]
        w = phi[nk:-1] if self.i else np.ones(1)
        sigma = self.sigma * math.exp(phi[-1])
        norm = float(np.linalg.norm(w))
        theta[self.row] = x / sigma * w / norm if norm > 0 else math.nan
        return theta, sigma

    def start(self, theta: np.ndarray) -> Phi:
        ti = theta[self.row]
        norm = float(np.linalg.norm(ti))
        w = ti / norm if norm > 0 else np.eye(self.i + 1)[self.i]
        ls = math.log(self.estimate / (self.sigma * norm)) if norm > 0 else 0.0
        return np.concatenate([theta[self.keep], w if self.i else [], [ls]])

    def phi_lower(self, theta_lower: np.ndarray) -> np.ndarray:
        w = np.full(self.i + 1, -np.inf)
        w[-1] = 0.0
        return np.concatenate([theta_lower[self.keep], w if self.i else [], [LOG_SIGMA_LOWER]])

    def objective(self, dev: _Deviance, x: float) -> PhiObjective:
        def f(phi: Phi) -> float:
            theta, sigma = self.theta_sigma(phi, x)
            return dev.at_sigma(theta, sigma) if np.isfinite(theta).all() else math.inf

        return f


@dataclass(frozen=True)
class _Cor(_Param):
    """cor_ij of one term (i < j): T_j rebuilt from z so that the correlation is r."""

    i: int = 0
    j: int = 1
    row_i: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    row_j: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    keep: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # theta not in T_j

    def _basis(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """u = T_i / |T_i| in R^(j+1) and B, an orthonormal basis of u's complement."""
        u = np.zeros(self.j + 1)
        ti = theta[self.row_i]
        norm = float(np.linalg.norm(ti))
        if norm > 0:
            u[: self.i + 1] = ti / norm
        else:
            u[self.i] = 1.0
        v = u.copy()
        v[self.i] += 1.0  # u_i = T_ii / |T_i| >= 0, so |v|^2 >= 2
        H = np.eye(self.j + 1) - 2.0 * np.outer(v, v) / (v @ v)  # H e_i = -u
        return u, np.delete(H, self.i, axis=1)

    def theta(self, phi: Phi, r: float) -> np.ndarray:
        theta = np.zeros(len(self.keep))
        theta[self.keep] = phi[: int(self.keep.sum())]
        z = phi[int(self.keep.sum()) :]
        u, B = self._basis(theta)
        theta[self.row_j] = r * np.linalg.norm(z) * u + math.sqrt(max(1 - r * r, 0.0)) * B @ z
        return theta

    def start(self, theta: np.ndarray) -> Phi:
        u, B = self._basis(theta)
        tj = theta[self.row_j]
        s = math.sqrt(max(1.0 - self.estimate**2, 0.0))
        z = B.T @ tj / s if s > 1e-12 else np.linalg.norm(tj) * np.eye(self.j)[0]
        return np.concatenate([theta[self.keep], z])

    def phi_lower(self, theta_lower: np.ndarray) -> np.ndarray:
        return np.concatenate([theta_lower[self.keep], np.full(self.j, -np.inf)])

    def objective(self, dev: _Deviance, x: float) -> PhiObjective:
        return lambda phi: dev.profiled(self.theta(phi, x))


def _rows(p: int, t0: int) -> list[np.ndarray]:
    """Indices into theta of each row T_i of a p x p term starting at theta[t0]."""
    r, c = lower_colmajor(p)
    at = {(int(a), int(b)): t0 + k for k, (a, b) in enumerate(zip(r, c))}
    return [np.array([at[(i, k)] for k in range(i + 1)]) for i in range(p)]


def _without(nth: int, row: np.ndarray) -> np.ndarray:
    keep = np.ones(nth, bool)
    keep[row] = False
    return keep


def _term_params(
    T: np.ndarray, t0: int, nth: int, nlevels: int, sigma: float, first: int
) -> list[_Param]:
    """The SDs and correlations of one term, in theta's order, named from ``first``."""
    p = T.shape[0]
    rows = _rows(p, t0)
    norms = np.linalg.norm(T, axis=1)
    out: list[_Param] = []
    for k, (a, b) in enumerate(zip(*lower_colmajor(p))):
        name = f".sig{first + k:02d}"
        if a == b:
            sd = float(sigma * norms[a])
            singular = norms[a] < SINGULAR_NORM
            step = 0.1 * sigma if singular else sd / math.sqrt(2 * nlevels)
            out.append(_SD(name, sd, 0.0, math.inf, step, i=int(a), row=rows[a],
                           keep=_without(nth, rows[a]), sigma=sigma))  # fmt: skip
            continue
        denom = norms[a] * norms[b]
        cor = float(T[a] @ T[b] / denom) if denom > 0 else 0.0
        keep = _without(nth, rows[a])
        step = max(1 - cor * cor, 0.05) / math.sqrt(nlevels)
        out.append(_Cor(name, cor, -1.0, 1.0, step, i=int(b), j=int(a),
                        row_i=rows[b], row_j=rows[a], keep=keep))  # fmt: skip
    return out


def parameters(model: LinearMixedModel, sol: PLSSolution) -> list[_Param]:
    """lme4's profiled parameters at an ML solution: .sig01, ..., .sigma, fixed effects."""
    tmap, layout = model.tmap, model.tmap.layout
    sigma = math.sqrt(sol.pwrss / model.criterion.n)
    out: list[_Param] = []
    t0 = 0
    for T, nlevels in zip(tmap.blocks(sol.theta), layout.nlevels):
        out.extend(_term_params(T, t0, tmap.size, nlevels, sigma, len(out) + 1))
        t0 += T.shape[0] * (T.shape[0] + 1) // 2
    n = model.criterion.n
    out.append(_Sigma(".sigma", sigma, 0.0, math.inf, sigma / math.sqrt(2 * n), False))
    for j, name in enumerate(model.data.fixed_names):
        se = sigma * math.sqrt(_vjj(sol, j))
        out.append(_Beta(name, float(sol.beta[j]), -math.inf, math.inf, se, j=j))
    return out


def parameter_names(fit: LMMFit) -> list[str]:
    """lme4's row names of confint(fit) (without profiling anything)."""
    return [p.name for p in parameters(fit.model, fit.sol)]


# ---- zeta and its roots --------------------------------------------------------------


class _Profiler:
    """The points profiled for one parameter so far: the state of one profile."""

    def __init__(self, param: _Param, dev: _Deviance, base: float, theta: np.ndarray) -> None:
        self.param, self.dev, self.base = param, dev, base
        self.phi_lower = param.phi_lower(dev.model.tmap.lower())
        self.points: list[tuple[float, float, Phi]] = [(param.estimate, 0.0, param.start(theta))]
        self.lowest = 0.0  # the most negative D(x) - D(x_hat) met

    def zeta(self, x: float) -> float:
        for px, pz, _ in self.points:
            if px == x:
                return pz
        start = self._start(x)
        opt = minimize(self.param.objective(self.dev, x), start, self.phi_lower, INNER_CONTROL)
        diff = opt.fun - self.base
        self.lowest = min(self.lowest, diff)
        sign = 1.0 if x > self.param.estimate else -1.0
        z = sign * math.sqrt(max(diff, 0.0)) if not math.isnan(diff) else math.nan
        self.points.append((x, z, opt.x))
        return z

    def _start(self, x: float) -> Phi:
        """phi extrapolated linearly from the two profiled points nearest to ``x``."""
        near = sorted(self.points, key=lambda pt: abs(pt[0] - x))[:2]
        if len(near) < 2 or near[0][0] == near[1][0]:
            return near[0][2]
        (x1, _, phi1), (x2, _, phi2) = near
        phi = phi1 + (x - x1) / (x2 - x1) * (phi2 - phi1)
        return np.maximum(phi, self.phi_lower)

    def trace(self) -> ProfileTrace:
        pts = sorted((x, z) for x, z, _ in self.points if not math.isnan(z))
        return ProfileTrace(self.param.name, tuple(x for x, _ in pts), tuple(z for _, z in pts))


def _toward(param: _Param, prev: float, x: float, limit: float) -> float:
    """``x``, or the limit when ``x`` is past it (halfway to an open limit)."""
    if (x - limit) * (limit - prev) <= 0:
        return x
    return limit if limit != param.lower or param.lower_closed else (prev + limit) / 2


def _interpolate(pts: list[tuple[float, float]]) -> float:
    """x at g = 0 by inverse interpolation (quadratic through the three points with the
    smallest |g|, or linear through two)."""
    near = sorted(pts, key=lambda pt: abs(pt[1]))[:3]
    if len({g for _, g in near}) < len(near):
        near = near[:2]
    if len({g for _, g in near}) < 2:
        return math.nan
    x = 0.0
    for i, (xi, gi) in enumerate(near):
        w = 1.0
        for k, (_, gk) in enumerate(near):
            if k != i:
                w *= gk / (gk - gi)
        x += w * xi
    return x


def _next(pts: list[tuple[float, float]], up: bool) -> float:
    """The next x: interpolated, kept inside the bracket once the root is bracketed
    (else bisected), or at most 10 times as far out as the farthest point so far."""
    below = [x for x, g in pts if g < 0]
    above = [x for x, g in pts if g > 0]
    x = _interpolate(pts)
    if below and above:
        lo, hi = (max(below), min(above)) if up else (max(above), min(below))
        inside = min(lo, hi) < x < max(lo, hi) and math.isfinite(x)
        return x if inside else (lo + hi) / 2
    xs = [x0 for x0, _ in pts]
    est, far = xs[0], (max(xs) if up else min(xs))
    span = far - est
    if not math.isfinite(x) or (x - far) / span < 1e-3:
        return far + 0.5 * span
    return min(x, far + 10 * span) if up else max(x, far + 10 * span)


def _bound(prof: _Profiler, target: float) -> float:
    """The x with zeta(x) = target on target's side of the estimate, or the limit."""
    param = prof.param
    limit = param.upper if target > 0 else param.lower
    if param.estimate == limit:
        return limit
    pts = [(param.estimate, -target)]  # (x, zeta(x) - target)
    x = _toward(param, param.estimate, param.estimate + target * param.step, limit)
    for _ in range(MAX_ROOT_STEPS):
        g = prof.zeta(x) - target
        if math.isnan(g):  # the re-optimization failed there: come back halfway
            x = (pts[-1][0] + x) / 2
            continue
        if abs(g) < ZETA_TOL:
            return x
        pts.append((x, float(np.clip(g, -1e10, 1e10))))
        if x == limit and g * target < 0:
            return limit
        x = _toward(param, pts[-1][0], _next(pts, target > 0), limit)
    return math.nan


# ---- the public entry point ----------------------------------------------------------


def _ml_fit(fit: LMMFit) -> LMMFit:
    """The fit itself when by ML; else the ML refit (lme4's refitML)."""
    if not fit.model.reml:
        return fit
    return LinearMixedModel(fit.model.data, reml=False).fit()


def _select(params: list[_Param], which: Sequence[str] | str | None) -> list[_Param]:
    """lme4's ``which``: names, or "theta_" (variance parameters) or "beta_"."""
    if which is None:
        return params
    names = [which] if isinstance(which, str) else list(which)
    nvar = sum(not isinstance(p, _Beta) for p in params)
    groups = {"theta_": params[:nvar], "beta_": params[nvar:]}
    by_name = {p.name: p for p in params}
    chosen: list[_Param] = []
    for name in names:
        if name not in by_name and name not in groups:
            known = ", ".join(by_name)
            raise InputError(f"no parameter {name!r} to profile (choose from {known})", "which")
        chosen.extend(groups.get(name, [by_name.get(name)]))  # type: ignore[list-item]
    return [p for p in params if p in chosen]


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise InputError(f"level {level} is not between 0 and 1", "level")


def _profile(param: _Param, dev: _Deviance, base: float, theta: np.ndarray, z: float):
    prof = _Profiler(param, dev, base, theta)
    row = ProfileInterval(param.name, param.estimate, _bound(prof, -z), _bound(prof, z))
    note = None
    if prof.lowest < -LOWER_DEVIANCE_TOL:
        note = (f"{param.name}: the profile found an ML deviance {-prof.lowest:.3g} below "
                "the fit's; the fit had not reached the optimum")  # fmt: skip
    return row, prof.trace(), note


def profile_intervals(
    fit: LMMFit, level: float = 0.95, which: Sequence[str] | str | None = None
) -> ProfileResult:
    """Profile-likelihood intervals of ``fit``'s parameters, as lme4's
    ``confint(fit, method = "profile", level = level, parm = which)``."""
    if not isinstance(fit, LMMFit):
        raise InputError("profile intervals are available for linear mixed models", "model")
    _check_level(level)
    ml = _ml_fit(fit)
    model, theta = ml.model, ml.sol.theta
    params = _select(parameters(model, ml.sol), which)
    dev = _Deviance(model)
    z = float(stats.norm.ppf(0.5 + level / 2))
    started = time.perf_counter()
    with limited_blas(model.pls.factor):
        base = dev.profiled(theta)
        done = [_profile(p, dev, base, theta, z) for p in params]
        model.solve(theta)  # leave the factor at the fit
    return ProfileResult(
        level=level,
        deviance=base,
        intervals=tuple(row for row, _, _ in done),
        traces=tuple(trace for _, trace, _ in done),
        evaluations=dev.evaluations,
        seconds=time.perf_counter() - started,
        messages=tuple(note for _, _, note in done if note),
    )
