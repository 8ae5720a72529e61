"""GLM families and links, as R's ``binomial()`` and ``poisson()``.

    mu = linkinv(eta)        dmu/deta = mu_eta(eta)        Var(y) = variance(mu) / wt
    deviance residual        d_i = dev_resids(y_i, mu_i, wt_i)
    working weight           w_i = wt_i mu_eta(eta_i)^2 / variance(mu_i)
    working response         z_i = eta_i + (y_i - mu_i) / mu_eta(eta_i)
    aic(mu)                  -2 log-likelihood (R's family$aic, without the 2k term)

Logit's (mu, mu_eta) share one exponential, e = exp(-|eta|), s = 1 / (1 + e):

    mu = s (eta >= 0) or e s (eta < 0),     mu_eta = e s^2

For fixed data both sums over the rows are a constant plus a kernel in log mu:

    binomial  sum d_i = 2 sum wt (y log y + (1-y) log(1-y)) - 2 sum wt (y log mu + (1-y) log(1-mu))
              aic     = -2 sum log C(m, k)                  - 2 sum (k log mu + (m-k) log(1-mu))
    poisson   sum d_i = 2 sum wt (y log y - y)              - 2 sum wt (y log mu - mu)
              aic     = 2 sum wt log y!                     - 2 sum wt (y log mu - mu)

with m = round(wt) trials and k = round(m y) successes; ``Likelihood`` keeps the
constants and the kernels' coefficients.

Binomial responses are proportions with the number of trials as prior weights
(``cbind(s, f)`` gives y = s/(s+f), wt = s+f); Poisson responses are counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special

from .errors import DataError

_EPS = np.finfo(float).eps
Array = np.ndarray


@dataclass(frozen=True)
class Link:
    name: str
    linkfun: Callable[[Array], Array]
    linkinv: Callable[[Array], Array]
    mu_eta: Callable[[Array], Array]
    fused: Callable[[Array], tuple[Array, Array]] | None = None

    def inverse(self, eta: Array) -> tuple[Array, Array]:
        """(mu, dmu/deta) at eta."""
        if self.fused is not None:
            return self.fused(eta)
        return self.linkinv(eta), self.mu_eta(eta)


def _logit_inv(eta: Array) -> Array:
    return np.clip(special.expit(eta), _EPS, 1 - _EPS)


def _logit_fused(eta: Array) -> tuple[Array, Array]:
    e = np.exp(-np.abs(eta))
    s = 1.0 / (1.0 + e)
    es = e * s
    mu = np.where(eta >= 0, s, es)
    np.clip(mu, _EPS, 1 - _EPS, out=mu)
    es *= s
    return mu, np.maximum(es, _EPS, out=es)


def _cloglog_inv(eta: Array) -> Array:
    return np.clip(-np.expm1(-np.exp(eta)), _EPS, 1 - _EPS)


_SQRT_2PI = float(np.sqrt(2 * np.pi))

LINKS = {
    "logit": Link(
        "logit", special.logit, _logit_inv,
        lambda e: np.maximum(special.expit(e) * special.expit(-e), _EPS), _logit_fused,
    ),
    "probit": Link(
        "probit", special.ndtri, lambda e: np.clip(special.ndtr(e), _EPS, 1 - _EPS),
        lambda e: np.maximum(np.exp(-0.5 * e * e) / _SQRT_2PI, _EPS),
    ),
    "cloglog": Link(
        "cloglog", lambda m: np.log(-np.log1p(-m)), _cloglog_inv,
        lambda e: np.maximum(np.exp(e - np.exp(np.minimum(e, 700))), _EPS),
    ),
    "log": Link(
        "log", np.log, lambda e: np.maximum(np.exp(e), _EPS),
        lambda e: np.maximum(np.exp(e), _EPS),
    ),
}  # fmt: skip


def _ylogy(y: Array, mu: Array) -> Array:
    """y log(y / mu) with 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0) / mu), 0.0)


@dataclass(frozen=True)
class Family:
    name: str
    link: Link

    @property
    def canonical(self) -> bool:
        """Whether the link is the family's canonical one (logit, log): then the working
        weights are the observed information, -dv/deta = W (``laplace_gradient``)."""
        return self.link.name == DEFAULT_LINK[self.name]

    def weight_slope(self, mu: Array, mu_eta: Array, wt: Array) -> Array:
        """dW/deta for the canonical link, W = wt mu_eta: wt dmu_eta/deta, which is
        wt mu_eta (1 - 2 mu) for logit and wt mu for log."""
        return wt * mu_eta * (1.0 - 2.0 * mu) if self.name == "binomial" else wt * mu

    def variance(self, mu: Array) -> Array:
        return mu * (1 - mu) if self.name == "binomial" else mu

    def dev_resids(self, y: Array, mu: Array, wt: Array) -> Array:
        if self.name == "binomial":
            return 2 * wt * (_ylogy(y, mu) + _ylogy(1 - y, 1 - mu))
        return 2 * wt * (_ylogy(y, mu) - (y - mu))

    def likelihood(self, y: Array, wt: Array) -> Likelihood:
        """The deviance and aic of (y, wt) as functions of mu."""
        lg = special.gammaln
        if self.name == "binomial":
            m = np.round(wt)
            k = np.round(m * y)
            log_choose = lg(m + 1) - lg(k + 1) - lg(m - k + 1)
            saturated = 2 * np.sum(wt * (special.xlogy(y, y) + special.xlogy(1 - y, 1 - y)))
            return Likelihood(True, wt * y, wt * (1 - y), float(saturated), k, m - k,
                              float(-2 * np.sum(log_choose)))  # fmt: skip
        saturated = 2 * np.sum(wt * (special.xlogy(y, y) - y))
        return Likelihood(False, wt * y, wt, float(saturated), wt * y, wt,
                          float(2 * np.sum(wt * lg(y + 1))))  # fmt: skip

    def initial_mu(self, y: Array, wt: Array) -> Array:
        """R's family$initialize."""
        if self.name == "binomial":
            return (wt * y + 0.5) / (wt + 1)
        return y + 0.1

    def validate(self, y: Array, wt: Array, response: str) -> None:
        if self.name == "binomial" and (np.any(y < 0) or np.any(y > 1)):
            bad = y[(y < 0) | (y > 1)][0]
            raise DataError(
                f"binomial response '{response}' must be in [0, 1] (a 0/1 column, a "
                f"proportion with --weights, or cbind(successes, failures)); found {bad:g}",
                response,
            )
        if self.name == "poisson":
            if np.any(y < 0) or np.any(y != np.round(y)):
                bad = y[(y < 0) | (y != np.round(y))][0]
                raise DataError(
                    f"poisson response '{response}' must be whole counts >= 0; found {bad:g}",
                    response,
                )


@dataclass(frozen=True)
class Likelihood:
    """sum dev_resids and aic of fixed data as constant - 2 kernel(mu) (module docstring):
    kernel = a . log mu + b . log(1 - mu) (binomial) or a . log mu - b . mu (poisson)."""

    binomial: bool
    a_dev: Array
    b_dev: Array
    c_dev: float
    a_aic: Array
    b_aic: Array
    c_aic: float

    def _kernel(self, a: Array, b: Array, mu: Array) -> float:
        if self.binomial:
            return float(a @ np.log(mu) + b @ np.log1p(-mu))
        return float(a @ np.log(mu) - b @ mu)

    def deviance(self, mu: Array) -> float:
        return self.c_dev - 2.0 * self._kernel(self.a_dev, self.b_dev, mu)

    def aic(self, mu: Array) -> float:
        return self.c_aic - 2.0 * self._kernel(self.a_aic, self.b_aic, mu)


DEFAULT_LINK = {"binomial": "logit", "poisson": "log"}
ALLOWED = {"binomial": ("logit", "probit", "cloglog"), "poisson": ("log",)}


def family(name: str, link: str | None = None) -> Family:
    """The family ``name`` with ``link`` (default: the canonical link)."""
    if name not in ALLOWED:
        raise DataError(f"unknown family '{name}' (binomial, poisson or gaussian)", "family")
    link = link or DEFAULT_LINK[name]
    if link not in ALLOWED[name]:
        raise DataError(
            f"link '{link}' is not available for the {name} family "
            f"(one of {', '.join(ALLOWED[name])})",
            "link",
        )
    return Family(name, LINKS[link])
