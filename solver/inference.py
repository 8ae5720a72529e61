"""Inference after the fit: likelihood-ratio tests of nested models, Wald intervals.

LRT (lme4's anova):  REML fits are refitted by ML (the REML criteria of models with
different fixed effects are not comparable), then
    chisq = deviance_small - deviance_big,   df = npar_big - npar_small,
    p = P(chi^2_df > chisq),   npar = p + len(theta) + 1 (sigma)
``compare`` is the test itself, on two ML fits' lines (``stored_line`` reads one from
a result kept as JSON, as the service keeps finished jobs).
Wald interval of a fixed effect:  beta_j -/+ z_{(1+level)/2} SE_j
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

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

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``sparsemm anova --format json``."""
        return asdict(self)


def _ml(fit: LMMFit) -> FitResult:
    if fit.result.method == "ML":
        return fit.result
    return LinearMixedModel(fit.model.data, reml=False).fit().result


def _npar(n_fixed: int, n_theta: int) -> int:
    return n_fixed + n_theta + 1  # + sigma


def model_line(res: FitResult) -> ModelFit:
    """A fit's line of the anova table (an ML fit's, for a test)."""
    npar = _npar(len(res.fixed_effects), len(res.theta))
    return ModelFit(res.formula, npar, res.aic, res.bic, res.loglik, res.deviance)


def stored_line(result: Mapping[str, Any]) -> ModelFit:
    """The anova line of an ML fit of an LMM kept as the JSON contract (DESIGN.md §5),
    e.g. a finished job's result: no refit needed."""
    if result.get("method") != "ML" or result.get("family") != "gaussian":
        raise InputError("only ML fits of linear mixed models can be compared as kept", "models")
    npar = _npar(len(result["fixed_effects"]), len(result["theta"]))
    aic, bic, loglik, deviance = (float(result[k]) for k in ("aic", "bic", "loglik", "deviance"))
    return ModelFit(result["formula"], npar, aic, bic, loglik, deviance)


def compare(a: ModelFit, b: ModelFit, nobs: tuple[int, int]) -> LikelihoodRatio:
    """The test of two ML fits' lines (``nobs``: their numbers of observations)."""
    if nobs[0] != nobs[1]:
        raise InputError(
            f"models were fitted to different rows ({nobs[0]} and {nobs[1]} observations)",
            "models",
        )
    if a.npar > b.npar:
        a, b = b, a
    if a.npar == b.npar:
        raise InputError("nested models must differ in their number of parameters", "models")
    chisq = max(a.deviance - b.deviance, 0.0)
    df = b.npar - a.npar
    return LikelihoodRatio(a, b, chisq, df, float(stats.chi2.sf(chisq, df)))


def likelihood_ratio(small: LMMFit, big: LMMFit) -> LikelihoodRatio:
    """Compare two nested LMMs fitted to the same rows, as lme4's ``anova(small, big)``."""
    nobs = (small.result.nobs, big.result.nobs)
    return compare(model_line(_ml(small)), model_line(_ml(big)), nobs)


def add_inference(
    out: dict[str, Any], fit: LMMFit, satterthwaite: bool, icc: bool
) -> dict[str, Any]:
    """A fit's JSON contract (``out``) with the inference asked for: lmerTest's ``df`` and
    ``p_value`` on every fixed effect, performance::icc's ``icc`` object."""
    from dataclasses import asdict

    from .icc import icc as intraclass
    from .satterthwaite import satterthwaite as t_tests

    if satterthwaite:
        for entry, test in zip(out["fixed_effects"], t_tests(fit)):
            entry["df"], entry["p_value"] = test.df, test.p_value
    if icc:
        out["icc"] = asdict(intraclass(fit))
    return out


def wald_intervals(result: FitResult, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """beta -/+ z SE for every fixed effect (lme4's confint(method = "Wald"))."""
    z = float(stats.norm.ppf(0.5 + level / 2))
    return {
        fe.term: (fe.estimate - z * fe.std_error, fe.estimate + z * fe.std_error)
        for fe in result.fixed_effects
    }
