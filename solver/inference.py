"""Inference after the fit: likelihood-ratio tests of nested models, Wald intervals.

LRT (lme4's anova):  REML fits are refitted by ML (the REML criteria of models with
different fixed effects are not comparable), then
    chisq = deviance_small - deviance_big,   df = npar_big - npar_small,
    p = P(chi^2_df > chisq),   npar = p + len(theta) + 1 (sigma)
Wald interval of a fixed effect:  beta_j -/+ z_{(1+level)/2} SE_j
"""

from __future__ import annotations

from dataclasses import dataclass

from scipy import stats

from .errors import InputError
from .lmm import LinearMixedModel, LMMFit
from .results import FitResult


@dataclass(frozen=True)
class ModelFit:
    """One model's line of the anova table (ML fit)."""

    formula: str
    npar: int
    aic: float
    bic: float
    loglik: float
    deviance: float


@dataclass(frozen=True)
class LikelihoodRatio:
    small: ModelFit
    big: ModelFit
    chisq: float
    df: int
    p: float


def _ml(fit: LMMFit) -> FitResult:
    if fit.result.method == "ML":
        return fit.result
    return LinearMixedModel(fit.model.data, reml=False).fit().result


def _line(res: FitResult) -> ModelFit:
    npar = len(res.fixed_effects) + len(res.theta) + 1
    return ModelFit(res.formula, npar, res.aic, res.bic, res.loglik, res.deviance)


def likelihood_ratio(small: LMMFit, big: LMMFit) -> LikelihoodRatio:
    """Compare two nested LMMs fitted to the same rows, as lme4's ``anova(small, big)``."""
    a, b = _line(_ml(small)), _line(_ml(big))
    if small.result.nobs != big.result.nobs:
        raise InputError(
            f"models were fitted to different rows ({small.result.nobs} and "
            f"{big.result.nobs} observations)", "models",
        )  # fmt: skip
    if a.npar > b.npar:
        a, b = b, a
    if a.npar == b.npar:
        raise InputError("nested models must differ in their number of parameters", "models")
    chisq = max(a.deviance - b.deviance, 0.0)
    df = b.npar - a.npar
    return LikelihoodRatio(a, b, chisq, df, float(stats.chi2.sf(chisq, df)))


def wald_intervals(result: FitResult, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """beta -/+ z SE for every fixed effect (lme4's confint(method = "Wald"))."""
    z = float(stats.norm.ppf(0.5 + level / 2))
    return {
        fe.term: (fe.estimate - z * fe.std_error, fe.estimate + z * fe.std_error)
        for fe in result.fixed_effects
    }
