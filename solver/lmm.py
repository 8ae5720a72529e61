"""Fitting a linear mixed model: lme4's ``mkLmerDevfun -> optimizeLmer -> checkConv``.

    objective(theta) = Criterion(PLS.solve(theta))        (ML deviance or REML criterion)
    theta_hat        = argmin objective, theta >= lower   (BOBYQA from lme4's start)

``LinearMixedModel.objective`` evaluates a given theta without optimizing (golden
tests at fixed theta, clients who supply theta).  ``fit`` returns an ``LMMFit``:
the frozen summary (``result``) plus what is needed for per-level and per-row
outputs (conditional modes, fitted values).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .condvar import conditional_variances
from .crossprod import z_matrix
from .errors import InputError
from .factor import limited_blas
from .gradient import forward_gradient, gradient, gradient_available
from .information import average_information
from .model import ModelData
from .newton import BOUNDARY, CONVERGED, minimize_newton
from .optimize import (
    Control,
    Diagnostic,
    check_convergence,
    combined,
    minimize,
    minimize_log_scale,
    stalled_near_zero,
)
from .pls import PLS, Criterion, PLSSolution, ThetaMap, exact_or_iterative
from .pls_iterative import IterativePLS, IterativeSolution
from .predict import predict
from .results import FitResult, build_result, ranef_table
from .sources import Source
from .start import one_term_starts

IterationProgress = Callable[[int, float], None]
NEWTON = "Newton on log(theta) (closed-form gradient, average information)"


class LinearMixedModel:
    """The objective of one model (ML or REML) over theta."""

    def __init__(self, data: ModelData, reml: bool = True, ordering: str = "auto") -> None:
        self.data = data
        self.reml = reml
        self.tmap = ThetaMap.build(data.layout)
        self.pls = make_pls(data, self.tmap, ordering)
        cp = data.cp
        self.criterion = Criterion(reml, cp.n, cp.XtX.shape[0], cp.sum_log_w)
        self._last: tuple[PLSSolution, np.ndarray | None] | None = None
        self._values: dict[bytes, float] = {}  # objective at recent thetas
        self._best: PLSSolution | None = None  # the lowest objective solved for
        self.evaluation_s: list[float] = []  # seconds of each PLS solve (+ its gradient)
        self._gradients: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=4)  # latest first

    def solve(self, theta: np.ndarray) -> PLSSolution:
        """The PLS solution at theta; the factor then holds theta.  The last one is kept:
        optimizers and the convergence checks often ask again for the point just seen."""
        theta = np.asarray(theta, dtype=np.float64)
        if self._last is not None and np.array_equal(self._last[0].theta, theta):
            return self._last[0]
        self._last = None  # a failed factorization leaves the factor in no known state
        started = time.perf_counter()
        sol = self.pls.solve(theta)
        self.evaluation_s.append(time.perf_counter() - started)
        self._last = (sol, None)
        if self._best is None or self.criterion(sol) < self.criterion(self._best):
            self._best = sol
        return sol

    def solution(self, theta: np.ndarray) -> PLSSolution:
        """The PLS solution at theta, without refactoring when it is the best point seen
        (the optimum, after the checks' gradients around it have moved the factor: the
        factor then need not hold theta; ``solve`` makes it)."""
        best = self._best
        if best is not None and np.array_equal(best.theta, theta):
            return best
        return self.solve(theta)

    def objective(self, theta: np.ndarray) -> float:
        """The profiled ML deviance or REML criterion at ``theta`` (inf where the
        system is numerically singular, e.g. an overparameterised model far out).  The
        last few values are remembered (the checks' polish asks again for the optimum's
        after the gradients around it have moved the factor)."""
        key = np.asarray(theta, dtype=np.float64).tobytes()
        if key not in self._values:
            try:
                value = self.criterion(self.solve(theta))
            except np.linalg.LinAlgError:
                value = math.inf
            self._remember(key, value)
        return self._values[key]

    def _remember(self, key: bytes, value: float) -> None:
        if len(self._values) >= 8:
            del self._values[next(iter(self._values))]
        self._values[key] = value

    def objective_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """The objective and its gradient in theta (closed form, see ``gradient``;
        forward differences where a vector term's T_k is singular)."""
        try:
            sol = self.solve(theta)
        except np.linalg.LinAlgError:
            return math.inf, np.zeros(len(theta))
        value = self.criterion(sol)
        self._remember(np.asarray(theta, dtype=np.float64).tobytes(), value)
        assert self._last is not None
        if self._last[1] is not None:
            return value, self._last[1].copy()
        started = time.perf_counter()
        grad = gradient(self.pls, self.criterion, sol)
        self.evaluation_s[-1] += time.perf_counter() - started
        if grad is None:  # (forward differences move the factor: solve again after)
            grad = forward_gradient(self.objective, np.asarray(theta, float), value)
            self.solve(theta)
        kept = grad.copy()  # (never written: the checks read it, callers get copies)
        self._last = (sol, kept)
        self._gradients.appendleft((sol.theta.copy(), kept))
        return value, grad

    def information(self, theta: np.ndarray) -> np.ndarray:
        """The average information at theta (``information``): a Hessian of the
        objective for Newton's method."""
        assert isinstance(self.pls, PLS)
        return average_information(self.pls, self.criterion, self.solve(theta))

    def _optimize(self, control: Control, progress: IterationProgress | None):
        """Newton's method with the closed-form gradient and the average information,
        on the log scale of the variance parameters, where both are available; where it
        heads for theta_j = 0 (a singular fit), BOBYQA from its last point; else, or
        where it stops short, L-BFGS-B with the gradient; near the boundary that goes on
        on the theta scale, and is finished by BOBYQA when it stops on a bound: theta_j =
        0 is a stationary point of the objective (even in a scalar theta_j), where a
        gradient method can stall."""
        lower, start, diagonal = self.tmap.lower(), self.tmap.start(), self.tmap.diagonal_mask()
        fg = self.objective_gradient if gradient_available(self.pls) else None
        if fg is None or not control.use_gradient:
            opt = minimize(self.objective, start, lower, control, progress, None)
            return opt, None, "Brent" if len(start) == 1 else "BOBYQA"
        opt, optimizer = self._newton(fg, start, diagonal, control, progress)
        if opt is not None and opt.status == BOUNDARY:
            opt = combined(opt, minimize(self.objective, opt.x, lower, control, progress, None))
            return opt, None, optimizer + ("Brent" if len(start) == 1 else "BOBYQA")
        if opt is None or opt.status != CONVERGED:
            x0 = opt.x if opt is not None and math.isfinite(opt.fun) else start
            searched = minimize_log_scale(fg, x0, diagonal, control, progress)
            opt = searched if opt is None else combined(opt, searched)
            optimizer += "L-BFGS-B on log(theta) (closed-form gradient)"
        if not math.isfinite(opt.fun) or stalled_near_zero(fg, opt.x, diagonal, control.gtol):
            x0 = opt.x if math.isfinite(opt.fun) else start
            opt = combined(opt, minimize(self.objective, x0, lower, control, progress, fg))
            optimizer += ", then on theta"
        at_bound = diagonal & (opt.x <= control.tol_singular)
        if not at_bound.any() and math.isfinite(opt.fun):
            return opt, fg, optimizer
        x0 = opt.x if math.isfinite(opt.fun) else start
        opt = combined(opt, minimize(self.objective, x0, lower, control, progress, None))
        return opt, None, optimizer + ", then BOBYQA at the boundary"

    def _newton(self, fg, start: np.ndarray, diagonal: np.ndarray, control: Control, progress):
        """Newton's method (``newton``) where the exact PLS gives the average information,
        from one-term fits' start where every term is scalar (``start``), else from
        lme4's: (its result or None, the optimizer's name so far)."""
        if not isinstance(self.pls, PLS) or not control.newton:
            return None, ""
        x0 = one_term_starts(self.pls.cp, self.tmap, self.criterion)
        name = NEWTON if x0 is None else NEWTON + " from one-term fits"
        opt = minimize_newton(
            self.objective, fg, self.information, start if x0 is None else x0, diagonal,
            control, progress,
        )  # fmt: skip
        return opt, name if opt.status == CONVERGED else f"{name} ({opt.status}), then "

    def fit(
        self, control: Control = Control(), progress: IterationProgress | None = None
    ) -> LMMFit:
        started, first = time.perf_counter(), len(self.evaluation_s)
        with limited_blas(self.pls.factor):
            opt, fg, optimizer = self._optimize(control, progress)
            checked = check_convergence(
                self.objective, opt.x, self.tmap.lower(), self.tmap.diagonal_mask(), control, fg,
                near=tuple(self._gradients),
            )  # fmt: skip
        checks, theta = checked.checks, checked.x
        if not opt.status.startswith("converged"):
            checks.append(Diagnostic("optimizer", "warning", opt.status))
        sol = self.solution(theta)
        if isinstance(sol, IterativeSolution):
            checks.extend(_iterative_notes(sol))
        result = build_result(self, sol, checks, opt.evaluations, optimizer)
        fit_s, evaluation_s = time.perf_counter() - started, tuple(self.evaluation_s[first:])
        return LMMFit(self, sol, result, fit_s, evaluation_s)


def _iterative_notes(sol: IterativeSolution) -> list[Diagnostic]:
    return [
        Diagnostic(
            "logdet_mc_error", "info",
            f"log|L|^2 by stochastic Lanczos quadrature: Monte Carlo standard error "
            f"{sol.logdet_se:.2g} (in the objective)", value=sol.logdet_se,
        ),
        Diagnostic(
            "condvar_approximate", "info",
            "conditional SDs are approximate on the iterative path (preconditioner and "
            "deflation space exact, the rest of the inverse neglected)",
        ),
    ]  # fmt: skip


def make_pls(data: ModelData, tmap: ThetaMap, ordering: str) -> PLS | IterativePLS:
    """The exact PLS (CHOLMOD or dense Schur complement) unless its factor would be too
    large, or ``ordering="iterative"``: then solves and a stochastic log-determinant
    (needs a scalar first term, which it eliminates exactly)."""
    return exact_or_iterative(
        data.layout, ordering, lambda: PLS(data.cp, tmap, ordering), lambda: _iterative(data, tmap)
    )


def _iterative(data: ModelData, tmap: ThetaMap) -> IterativePLS:
    if data.layout.p[0] != 1 or len(data.layout.p) < 2:
        raise InputError(
            "the iterative path needs a scalar first random-effects term, e.g. (1 | patient), "
            "and at least one more term", "formula",
        )  # fmt: skip
    return IterativePLS(data.cp, tmap)


@dataclass
class LMMFit:
    """A fitted model: the summary plus the state for per-level and per-row outputs."""

    model: LinearMixedModel
    sol: PLSSolution
    result: FitResult
    fit_s: float
    evaluation_s: tuple[float, ...] = ()  # the fit's evaluations (objective and gradient)

    def criterion_sigma2(self) -> float:
        return self.model.criterion.sigma2(self.sol)

    def _refresh(self) -> None:
        # the factor must hold this fit's theta (another evaluation may have moved it)
        self.model.solve(self.sol.theta)

    def ranef(self, cond_var: bool = True) -> pa.Table:
        """Conditional modes (and conditional SDs): group, level, term, condval, condsd."""
        self._refresh()
        _, b = self.model.pls.modes(self.sol)
        var = None
        if cond_var:  # (approximate on the iterative path: the fit's checks say so)
            var = conditional_variances(self.model.pls, self.model.tmap, self.sol)
            var = var * self.criterion_sigma2()
        return ranef_table(self.model.data, b, var)

    def fitted(self) -> pa.Table:
        """Fitted values, residuals and scaled Pearson residuals (r sqrt(w) / sigma, lme4's
        residuals(type = "pearson", scaled = TRUE)) in row order, rows with missing
        values skipped."""
        self._refresh()
        _, b = self.model.pls.modes(self.sol)
        sigma = math.sqrt(self.criterion_sigma2())
        fitted, resid, pearson = [], [], []
        data = self.model.data
        for rows in data.rows():
            eta = rows.X[:, data.kept] @ self.sol.beta + z_matrix(rows, data.layout) @ b
            offset = 0.0 if rows.offset is None else rows.offset
            fitted.append(eta + offset)
            resid.append(rows.y - eta)
            w = 1.0 if rows.w is None else np.sqrt(rows.w)
            pearson.append(resid[-1] * w / sigma)
        return pa.table({"fitted": np.concatenate(fitted), "residual": np.concatenate(resid),
                         "pearson": np.concatenate(pearson)})  # fmt: skip

    def predict(
        self,
        newdata: str | pa.Table | Source,
        re_form: str | None = None,
        allow_new_levels: bool = True,
        se_fit: bool = False,
    ) -> pa.Table:
        """Predictions on new rows, lme4's predict(fit, newdata, re.form, allow.new.levels):
        columns fit (and se_fit, of the fixed part), one row per new row, null where a row
        has missing values.  ``re_form``: None (all terms), "NA" (none) or bar terms such
        as "~(1 | Subject)".  See ``solver.predict``."""
        return predict(self, newdata, re_form, allow_new_levels, se_fit)


def fit(
    data: ModelData,
    reml: bool = True,
    control: Control = Control(),
    progress: IterationProgress | None = None,
    ordering: str = "auto",
) -> LMMFit:
    """Fit the model by REML (default) or ML."""
    return LinearMixedModel(data, reml, ordering).fit(control, progress)
