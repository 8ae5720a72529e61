"""Generalized linear mixed models by the Laplace approximation (lme4's glmer, nAGQ = 1).

At fixed theta (and, in the second stage, fixed beta), penalized iteratively
reweighted least squares (PIRLS) finds the conditional modes:

    eta = X beta + Z Lambda u + offset,   mu = linkinv(eta)
    w   = wt mu_eta(eta)^2 / variance(mu),   z = eta - offset + (y - mu) / mu_eta(eta)
    (beta, u) <- PLS with weights w and response z     (the LMM core, reweighted rows)
    pdev = sum dev_resids(y, mu, wt) + |u|^2           step-halving while pdev increases

    Laplace deviance  d(theta, beta) = family aic(y, mu) + |u|^2 + log|L|^2
                      = -2 log-likelihood (Laplace), as lme4's devfun

Stage 1 (nAGQ = 0) minimises d over theta with beta inside PIRLS; stage 2 minimises
d over (theta, beta) with PIRLS over u only.  With a canonical link and a mapped Schur
factor (or a single scalar term) d has a closed-form gradient (``laplace_gradient``):
stage 1 is then L-BFGS-B on log(theta), stage 2 quasi-Newton in units where the Hessian
at its start is I, and the checks' Hessian comes from central differences of the
gradient.  Otherwise both stages are BOBYQA, stage 2 in units where d's curvature is
about even (beta in its standard errors, theta_j in sqrt(2 / d_jj)), and the Hessian is
lme4's (central differences of d).  Each PIRLS
step solves the PLS system at the new weights by conjugate gradients through the
rows, preconditioned by the last factor (``pcg``), so that each evaluation factors once,
at the modes, for log|L|^2 (``WeightedPass`` forms that factor's cross-products from a
columnar buffer of the model rows); PIRLS starts from the modes predicted from those at
earlier points (``warmstart``).
Standard errors of beta come from the Hessian of d over (theta, beta) at the optimum,
as lme4's default ``vcov(use.hessian = TRUE)``:  vcov = 2 H^-1.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from .condvar import conditional_variances
from .crossprod import CrossProducts
from .errors import DataError
from .factor import MappedSchurFactor, SchurFactor, limited_blas
from .family import Family
from .laplace_gradient import Modes, NoGradient, laplace_gradient
from .leverage import RowLeverages
from .model import ModelData
from .optimize import (
    Checked,
    Control,
    OptimResult,
    check_convergence,
    combined,
    derivatives,
    minimize,
    minimize_log_scale,
    minimize_preconditioned,
    stalled_near_zero,
)
from .pcg import FactorPreconditioner, PLSOperator, pcg
from .pls import PLS, PLSSolution, ThetaMap
from .results import FitResult, glmm_result, ranef_table
from .warmstart import WarmStarts
from .weighted import WeightedPass

Progress = Callable[[int, float], None]
PIRLS_TOL = 1e-14  # stage 2 and the finite-difference Hessian (checks, standard errors)
PIRLS_TOL_STAGE1 = 1e-7  # lme4's tolPwrss: stage 1 only starts stage 2
PIRLS_MAXIT = 40
GLMM_DELTA = 1e-3
STAGE1_TOL = 1e-3  # stage 1 only starts stage 2: 1e-4 cost 9 more steps at EHR 100k
STAGE2_TOL = 1e-7
STAGE2_STEP = 0.5  # BOBYQA's first trust radius in stage 2's units (standard errors)
CURVATURE_STEP = 1e-2  # forward differences along theta for stage 2's units (BOBYQA)
BETA_STEP = 0.01  # finite-difference steps in beta, in its standard errors
PIRLS_TOL_GRADIENT = 1e-10  # stage 1 with the closed-form gradient
STAGE1_FTOL = 1e-9  # relative decrease at which L-BFGS-B ends stage 1
# A PIRLS step by PCG stops at a residual (P^-1-norm) of PCG_RTOL sqrt(pirls_tol) of the
# score's: at 1e-6 in stage 2, d stayed within 4e-11 of direct solves' (EHR 100k)
PCG_RTOL = 1e1
PCG_ATOL = 1e-11  # or below this P^-1-norm (~ the A-norm of u's error; d moves ~4x that)
PCG_MAXIT = 30  # more products with A than this: factor at the new weights instead


class Iterate(NamedTuple):
    """One PIRLS iterate: the modes, eta, the link's mu and dmu/deta, and pdev."""

    u: np.ndarray
    beta: np.ndarray
    eta: np.ndarray
    mu: np.ndarray
    d: np.ndarray
    pdev: float


@dataclass
class PirlsState:
    """The conditional modes at the last evaluated (theta, beta), kept as warm start."""

    u: np.ndarray
    beta: np.ndarray
    eta: np.ndarray
    devres: float = math.inf
    logdet: float = 0.0
    aic: float = math.inf
    iterations: int = 0
    converged: bool = True


class GeneralizedLinearMixedModel:
    """The Laplace deviance of one GLMM as a function of theta (and beta)."""

    def __init__(self, data: ModelData, fam: Family, ordering: str = "auto") -> None:
        rows = data.buffer
        if rows is None:
            raise ValueError("prepare(..., family=...) keeps the rows a GLMM needs")
        self.data, self.family = data, fam
        self.y = rows.y + (0.0 if rows.offset is None else rows.offset)
        if fam.name == "poisson" and rows.offset is not None:
            # rows.y is y - offset; undo the rounding of adding the offset back
            whole = np.abs(self.y - np.round(self.y)) < 1e-9 * np.maximum(1.0, np.abs(self.y))
            self.y = np.where(whole, np.round(self.y), self.y)
        self.wt = np.ones(len(self.y)) if rows.w is None else rows.w
        self.offset = np.zeros(len(self.y)) if rows.offset is None else rows.offset
        fam.validate(self.y, self.wt, data.formula.response)
        self.passes = WeightedPass(data)
        self.tmap = ThetaMap.build(data.layout)
        eta0 = fam.link.linkfun(fam.initial_mu(self.y, self.wt))
        self.notes: list[str] = []
        self.pirls_tol = PIRLS_TOL
        if fam.name == "binomial" and np.any(
            np.abs(self.wt * self.y - np.round(self.wt * self.y)) > 1e-7
        ):
            self.notes.append("non-integer #successes in a binomial glm!")
        self.lik = fam.likelihood(self.y, self.wt)
        start = Iterate(np.zeros(0), np.zeros(0), eta0, *fam.link.inverse(eta0), math.inf)
        self.pls = PLS(self._weighted(start, None), self.tmap, ordering)
        p, q = self.passes.X.shape[1], data.layout.q
        self.state = PirlsState(np.zeros(q), np.zeros(p), eta0)
        nt = self.tmap.size
        self.starts = {True: WarmStarts(nt), False: WarmStarts(nt + p)}  # key: beta inside
        self._factored: PLSSolution | None = None  # what the factor last solved
        self._empty = np.zeros((len(self.y), 0))
        self.evaluation_s: list[float] = []  # seconds of each evaluation (+ its gradient)
        # (point, d, gradient or None) of the last evaluation, while the state holds it
        self._last: tuple[tuple, float, np.ndarray | None] | None = None
        self.leverages = self._row_leverages()

    def _row_leverages(self) -> RowLeverages | None:
        """The closed-form gradient's row leverages, where it is offered: a canonical link
        and a mapped Schur factor, or a single scalar term (``laplace_gradient``); else
        None (BOBYQA only)."""
        factor = self.pls.factor
        if not self.family.canonical or not isinstance(factor, SchurFactor):
            return None
        try:
            return RowLeverages(self.passes.Z, factor)
        except ValueError:
            return None

    def _working_weights(self, mu: np.ndarray, d: np.ndarray) -> np.ndarray:
        """w = wt mu_eta^2 / variance(mu), d = mu_eta."""
        return self.wt * d**2 / self.family.variance(mu)

    def _weighted(self, it: Iterate, beta: np.ndarray | None) -> CrossProducts:
        w = self._working_weights(it.mu, it.d)
        z = it.eta - self.offset + (self.y - it.mu) / it.d
        if beta is None:
            return self.passes(w, z, self.passes.X)
        return self.passes(w, z - self.passes.X @ beta, self._empty)

    def _iterate(self, theta: np.ndarray, u: np.ndarray, beta: np.ndarray) -> Iterate:
        """eta, mu, dmu/deta and pdev at (theta, beta, u)."""
        b = self.tmap.Lambda(theta) @ u
        eta = self.passes.X @ beta + self.passes.Z @ b + self.offset
        mu, d = self.family.link.inverse(eta)
        return Iterate(u, beta, eta, mu, d, self.lik.deviance(mu) + float(u @ u))

    def pirls(self, theta: np.ndarray, beta: np.ndarray | None = None) -> PirlsState:
        """Conditional modes at theta (beta inside PIRLS when ``beta`` is None)."""
        self._last = None  # the state moves
        cur = self._start(theta, beta)
        Lambda = self.tmap.Lambda(theta)
        it = 0
        while it < PIRLS_MAXIT:
            it += 1
            old = cur.pdev
            cur = self._step_halving(theta, cur, *self._newton_step(theta, Lambda, cur, beta))
            if abs(old - cur.pdev) < self.pirls_tol * (abs(cur.pdev) + 0.1):
                break
        # log|L|^2 with the weights at the modes, not at wherever PIRLS started from
        logdet = self._factor(theta, self._weighted(cur, None)).logdet_L
        devres, aic = self.lik.deviance(cur.mu), self.lik.aic(cur.mu)
        if beta is None:
            self.starts[True].add(theta, np.concatenate([cur.u, cur.beta]))
        else:
            self.starts[False].add(np.concatenate([theta, beta]), cur.u)
        self.state = PirlsState(cur.u, cur.beta, cur.eta, devres, logdet, aic, it,
                                it < PIRLS_MAXIT)  # fmt: skip
        return self.state

    def _factor(self, theta: np.ndarray, cp: CrossProducts) -> PLSSolution:
        """Factor the PLS system at theta with cross-products cp and solve it; the factor
        then preconditions PIRLS's steps (``pcg``) until the next one."""
        self._last = None  # the factor moves
        self.pls.set_crossproducts(cp)
        self._factored = None  # a failed factorization leaves no preconditioner
        self._factored = self.pls.solve(theta)
        return self._factored

    def _preconditioner(self, with_beta: bool) -> FactorPreconditioner | None:
        """P^-1 from the last factor (``pcg``); None before there is one, or when beta is
        free and that factor was of the u block only."""
        sol = self._factored
        if sol is None or (with_beta and not sol.RX.size and self.passes.X.shape[1]):
            return None
        return FactorPreconditioner(self.pls.factor, sol, with_beta)

    def _newton_step(self, theta, Lambda, cur: Iterate, beta) -> tuple[np.ndarray, np.ndarray]:
        """(u, beta) after a full PIRLS (Newton) step from ``cur``: by PCG with the last
        factor as preconditioner (``pcg``); before there is one, or when PCG does not
        converge, by a new factor at cur's weights (which then preconditions)."""
        pre = self._preconditioner(beta is None)
        if pre is not None:
            x = self._pcg_step(Lambda, cur, beta, pre)
            if x is not None:
                q = len(cur.u)
                return cur.u + x[:q], (cur.beta + x[q:] if beta is None else beta)
        sol = self._factor(theta, self._weighted(cur, beta))
        return self.pls.modes(sol)[0], (sol.beta if beta is None else beta)

    def _pcg_step(self, Lambda, cur: Iterate, beta, pre) -> np.ndarray | None:
        """A^-1 r over u (and beta when it is free) by PCG, or None."""
        X = self.passes.X if beta is None else self._empty
        A = PLSOperator(
            self.passes.Z, self.passes.Zt, X, self._working_weights(cur.mu, cur.d), Lambda
        )
        r = self._score(cur, Lambda, beta is None)
        rtol = PCG_RTOL * math.sqrt(self.pirls_tol)
        x, _ = pcg(A, pre, r, pre(r), rtol, PCG_MAXIT, PCG_ATOL)
        return x

    def _v(self, mu: np.ndarray, d: np.ndarray) -> np.ndarray:
        """v = wt mu_eta (y - mu) / variance(mu) = -(1/2) d deviance / d eta."""
        return self.wt * d * (self.y - mu) / self.family.variance(mu)

    def _score(self, it: Iterate, Lambda: sp.csc_matrix, with_beta: bool) -> np.ndarray:
        """r = [Lambda'Z'v - u; X'v], v = wt mu_eta (y - mu) / variance(mu): the PLS
        system's residual at the iterate (``pcg``), X'v only when beta is free."""
        v = self._v(it.mu, it.d)
        ru = Lambda.T @ (self.passes.Zt @ v) - it.u
        return np.concatenate([ru, self.passes.X.T @ v]) if with_beta else ru

    def _start(self, theta: np.ndarray, beta: np.ndarray | None) -> Iterate:
        """PIRLS's first iterate: the warm starts' prediction of the modes (``warmstart``)
        or the last modes, whichever has the lower pdev."""
        st = self.state
        if st.devres == math.inf:
            mu, d = self.family.link.inverse(st.eta)
            return Iterate(st.u, st.beta, st.eta, mu, d, self.lik.deviance(mu))
        last = self._iterate(theta, st.u, st.beta if beta is None else beta)
        if beta is None:
            m = self.starts[True].predict(theta)
            pred = None if m is None else self._iterate(theta, m[: len(st.u)], m[len(st.u) :])
        else:
            m = self.starts[False].predict(np.concatenate([theta, beta]))
            pred = None if m is None else self._iterate(theta, m, beta)
        return last if pred is None or last.pdev <= pred.pdev else pred

    def _step_halving(self, theta, cur: Iterate, u1: np.ndarray, b1: np.ndarray) -> Iterate:
        t = 1.0
        while True:
            new = self._iterate(theta, cur.u + t * (u1 - cur.u), cur.beta + t * (b1 - cur.beta))
            if new.pdev <= cur.pdev * (1 + 1e-12) + 1e-10 or t < 1e-3:
                return new
            t /= 2

    def laplace(self, theta: np.ndarray, beta: np.ndarray | None = None) -> float:
        """d(theta, beta) = -2 log-likelihood (Laplace) at the PIRLS optimum (the last
        point's value again when asked twice in a row: the state still holds it)."""
        theta = np.asarray(theta, float)
        point = (self.pirls_tol, theta.tobytes(), None if beta is None else beta.tobytes())
        if self._last is not None and self._last[0] == point:
            return self._last[1]
        started = time.perf_counter()
        try:
            st = self.pirls(theta, beta)
        except np.linalg.LinAlgError:
            return math.inf
        finally:
            self.evaluation_s.append(time.perf_counter() - started)
        value = st.aic + float(st.u @ st.u) + st.logdet
        self._last = (point, value, None)
        return value

    def laplace_gradient(
        self, theta: np.ndarray, beta: np.ndarray | None = None
    ) -> tuple[float, np.ndarray]:
        """(d, its gradient) over theta, and beta when it is given (``laplace_gradient``);
        raises ``NoGradient`` where the closed form is not offered or does not hold
        (the searches then go on by BOBYQA)."""
        value = self.laplace(theta, beta)
        if not math.isfinite(value):
            return value, np.zeros(len(theta) + (0 if beta is None else len(beta)))
        if self.leverages is None or self._factored is None or not self.state.converged:
            raise NoGradient("no closed-form gradient here")
        assert self._last is not None
        g = self._last[2]
        if g is None:
            st = self.state
            mu, d = self.family.link.inverse(st.eta)
            w = self._working_weights(mu, d)
            at = Modes(st.u, w, self.family.weight_slope(mu, d, self.wt), self._v(mu, d))
            started = time.perf_counter()
            try:
                g = laplace_gradient(self.pls, self._factored, self.passes, self.leverages,
                                     at, beta is not None)  # fmt: skip
            except np.linalg.LinAlgError as e:
                raise NoGradient(str(e)) from None
            finally:
                self.evaluation_s[-1] += time.perf_counter() - started
            self._last = (self._last[0], value, g)
        return value, g.copy()

    def fit(self, control: Control = Control(), progress: Progress | None = None) -> GLMMFit:
        started, first = time.perf_counter(), len(self.evaluation_s)
        nt = self.tmap.size
        # PIRLS leaves ~1e-10 of noise in d: central differences need a step above it.
        # BOBYQA stops at STAGE2_TOL, so that the checks' Hessian (and the standard errors)
        # is taken where the Newton polish moves theta little: at 1e-7 the golden fits'
        # standard errors stay within 5e-5 of 1e-9's (1e-6: 9e-4) with 10-25% fewer steps
        control = replace(
            control, delta=max(control.delta, GLMM_DELTA), ftol_abs=STAGE2_TOL,
            xtol_abs=STAGE2_TOL, ftol_rel=0.0,
        )  # fmt: skip
        with limited_blas(self.pls.factor):
            stage1, stage1_name = self._stage1(control, progress)
            se = self._beta_se(stage1.x)
            steps = np.concatenate([np.full(nt, control.delta), BETA_STEP * se])
            x0 = np.concatenate([stage1.x, self.state.beta])
            lower = np.concatenate([self.tmap.lower(), np.full(len(se), -np.inf)])
            diag = np.concatenate([self.tmap.diagonal_mask(), np.zeros(len(se), bool)])

            def joint(x: np.ndarray) -> float:
                return self.laplace(x[:nt], x[nt:])

            stage2, fg, stage2_name = self._joint_stage(joint, x0, (lower, diag, steps), control,
                                                        progress)  # fmt: skip
            evals = len(self.evaluation_s) - first  # of the searches, however they ended
            checked = self._checks(joint, fg, stage2.x, lower, diag, steps, control)
            x = checked.x
            vcov = self._vcov(joint, checked, nt, control)
            value = joint(x)
        optimizer = f"{stage1_name} (nAGQ = 0), then {stage2_name} (nAGQ = 1)"
        result = glmm_result(self, x[:nt], x[nt:], value, vcov, checked.checks, evals, optimizer)
        fit_s, evaluation_s = time.perf_counter() - started, tuple(self.evaluation_s[first:])
        return GLMMFit(self, x[:nt], x[nt:], result, fit_s, evaluation_s)

    def _joint_stage(self, joint, x0, bounds, control, progress):
        """Stage 2 with the gradient where it is offered, finished (or done) by BOBYQA;
        (its result, the gradient the checks may use or None, the optimizers' names).
        ``bounds``: (lower, diagonal mask, finite-difference steps) over (theta, beta)."""
        nt = self.tmap.size
        lower, diag, steps = bounds
        if not self._use_gradient(control):
            return self._stage2(joint, x0, lower, steps, control, progress), None, "BOBYQA"
        fg = self._joint_gradient(nt)
        optimizer = "quasi-Newton over (log theta, beta) with the closed-form gradient"
        try:  # over (log theta, beta), scaled by the Hessian at x0 (theta and beta couple)
            stage2 = minimize_preconditioned(fg, x0, diag, steps, control, progress)
            if stage2 is not None and not self._at_boundary(fg, stage2.x, diag, control):
                return stage2, fg, optimizer
        except NoGradient:
            stage2 = None
        start = x0 if stage2 is None else stage2.x
        bobyqa = self._stage2(joint, start, lower, steps, control, progress)
        stage2 = bobyqa if stage2 is None else combined(stage2, bobyqa)
        return stage2, None, optimizer + ", then BOBYQA"

    def _checks(self, joint, fg, x, lower, diag, steps, control: Control) -> Checked:
        """lme4's checks, the Hessian by central differences of the gradient where it
        is offered, which is then computed in double precision throughout: the
        differences would magnify a single-precision S^-1's error (see
        ``MappedSchurFactor.gradient_inverse_lower``)."""
        factor = self.pls.factor
        if fg is None:
            return check_convergence(joint, x, lower, diag, control, None, steps)
        mapped = isinstance(factor, MappedSchurFactor)  # else one scalar term: no S^-1
        if mapped:
            factor.allow_single_precision(False)
            if self._last is not None:  # its gradient may have come from a single S^-1
                self._last = (*self._last[:2], None)
        try:
            return check_convergence(joint, x, lower, diag, control, fg, steps, True)
        except NoGradient:
            return check_convergence(joint, x, lower, diag, control, None, steps)
        finally:
            if mapped:
                factor.allow_single_precision(True)

    def _at_boundary(self, fg, x: np.ndarray, diag: np.ndarray, control: Control) -> bool:
        """Whether a diagonal theta_j ended at (or still heads for) 0, where the log scale
        stalls: BOBYQA then finishes on the theta scale (as ``LinearMixedModel``)."""
        at_bound = diag & (x <= control.tol_singular)
        return bool(at_bound.any()) or stalled_near_zero(fg, x, diag, control.gtol)

    def _use_gradient(self, control: Control) -> bool:
        return self.leverages is not None and control.use_gradient

    def _joint_gradient(self, nt: int) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
        def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
            return self.laplace_gradient(x[:nt], x[nt:])

        return fg

    def _stage1(self, control: Control, progress: Progress | None) -> tuple[OptimResult, str]:
        """nAGQ = 0 (it only starts stage 2), then the modes at its optimum to full
        precision: by L-BFGS-B on log(theta) with the closed-form gradient where it is
        offered (PIRLS to PIRLS_TOL_GRADIENT, for a gradient L-BFGS-B can trust), else
        by BOBYQA to STAGE1_TOL with lme4's PIRLS tolerance; (its result, its name)."""
        start, lower = self.tmap.start(), self.tmap.lower()
        stage1, name = None, "BOBYQA"
        if self._use_gradient(control):
            name = "L-BFGS-B on log(theta) with the closed-form gradient"
            self.pirls_tol = PIRLS_TOL_GRADIENT
            coarse = replace(control, lbfgs_ftol=STAGE1_FTOL)
            diagonal = self.tmap.diagonal_mask()
            try:
                stage1 = minimize_log_scale(self.laplace_gradient, start, diagonal, coarse,
                                            progress)  # fmt: skip
            except NoGradient:
                name += ", then BOBYQA"
        if stage1 is None:
            self.pirls_tol = PIRLS_TOL_STAGE1
            coarse = replace(control, ftol_abs=STAGE1_TOL, xtol_abs=STAGE1_TOL)
            stage1 = minimize(self.laplace, start, lower, coarse, progress)
        self.pirls_tol = PIRLS_TOL
        self.pirls(stage1.x)
        return stage1, name

    def _stage2(self, joint, x0, lower, steps, control, progress) -> OptimResult:
        """BOBYQA over (theta, beta) from x0.  Its trust region is round: it searches in
        units where d's curvature is about even, beta in its standard errors and theta_j
        in sqrt(2 / d_jj), with a first radius of STAGE2_STEP of them."""
        nt = self.tmap.size
        scale = np.concatenate([self._theta_scale(joint, x0, nt), 100.0 * steps[nt:]])
        self.starts[False].scale = scale
        search = replace(control, initial_step=STAGE2_STEP)
        res = minimize(lambda z: joint(z * scale), x0 / scale, lower / scale, search, progress)
        return replace(res, x=res.x * scale)

    def _theta_scale(self, joint, x0: np.ndarray, nt: int) -> np.ndarray:
        """sqrt(2 / d_jj) for each theta_j (as beta's standard error is sqrt(2 / d_bb)),
        d_jj by forward second differences at x0; at most 1 (flat or curved down)."""
        f0, out = joint(x0), np.ones(nt)
        for j in range(nt):
            e = np.zeros(len(x0))
            e[j] = CURVATURE_STEP
            d2 = (joint(x0 + 2 * e) - 2 * joint(x0 + e) + f0) / CURVATURE_STEP**2
            if np.isfinite(d2) and d2 > 2.0:
                out[j] = math.sqrt(2.0 / d2)
        return out

    def _beta_se(self, theta: np.ndarray) -> np.ndarray:
        """beta's conditional standard errors at theta and the current modes (from R_X):
        the units of stage 2 and of the finite-difference steps in beta (BETA_STEP of
        them, so badly scaled columns (age^2) get steps their curvature can use, above
        the ~1e-10 noise PIRLS leaves in d)."""
        st = self.state
        mu, d = self.family.link.inverse(st.eta)
        cur = Iterate(st.u, st.beta, st.eta, mu, d, math.inf)
        RX = self._factor(theta, self._weighted(cur, None)).RX  # X included
        return np.sqrt(np.diag(np.linalg.inv(RX.T @ RX))) if RX.size else np.zeros(0)

    def _vcov(self, joint, checked: Checked, nt: int, control: Control) -> np.ndarray:
        """2 H^-1 restricted to beta, H the Hessian of d over (theta, beta) (lme4), from
        the convergence check's derivatives when it took them."""
        free, H = checked.free, checked.hess
        if free is None or H is None:
            x = checked.x
            free = np.ones(len(x), bool)
            free[:nt] = ~(self.tmap.diagonal_mask() & (x[:nt] <= control.tol_singular))
            xf = x.copy()

            def sub(z: np.ndarray) -> float:
                xf[free] = z
                return joint(xf.copy())

            _, H = derivatives(sub, x[free], control.delta)
        try:
            inv = np.linalg.inv(H)
        except np.linalg.LinAlgError:
            raise DataError("the Hessian of the deviance is singular: standard errors "
                            "cannot be computed", "formula") from None  # fmt: skip
        nf = int(free[:nt].sum())
        return 2.0 * inv[nf:, nf:]


@dataclass
class GLMMFit:
    """A fitted GLMM: the summary plus what per-level and per-row outputs need."""

    model: GeneralizedLinearMixedModel
    theta: np.ndarray
    beta: np.ndarray
    result: FitResult
    fit_s: float
    evaluation_s: tuple[float, ...] = ()  # the fit's Laplace evaluations (+ gradients)

    def _refresh(self) -> None:
        self.model.pirls(self.theta, self.beta)

    def ranef(self, cond_var: bool = True) -> pa.Table:
        self._refresh()
        st, m = self.model.state, self.model
        b = np.asarray(m.tmap.Lambda(self.theta) @ st.u)
        var = conditional_variances(m.pls, m.tmap, m.pls.solve(self.theta)) if cond_var else None
        return ranef_table(m.data, b, var)

    def fitted(self) -> pa.Table:
        """Fitted means (response scale), response, Pearson and deviance residuals."""
        self._refresh()
        m = self.model
        mu = m.family.link.linkinv(m.state.eta)
        var = m.family.variance(mu)
        pearson = (m.y - mu) * np.sqrt(m.wt / var)
        dev = np.sign(m.y - mu) * np.sqrt(np.maximum(m.family.dev_resids(m.y, mu, m.wt), 0))
        return pa.table({"fitted": mu, "residual": m.y - mu, "pearson": pearson,
                         "deviance_residual": dev})  # fmt: skip
