"""lme4's ``confint(m, method = "profile" | "Wald", level, parm)`` of an LMM, as one table.

    profile   ``profile.profile_intervals``: the profile of the ML deviance (a REML fit is
              refitted by ML first, as lme4 does); rows .sig01, ..., .sigma, fixed effects
    wald      beta -/+ z SE from the fit as it is (REML or ML); the variance parameters'
              rows have no bounds (lme4's NA)

``confint`` returns the object ``sparsemm confint --format json`` prints (without its
timings); the same object comes back from a server's ConfidenceIntervals call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .errors import InputError
from .inference import wald_intervals
from .lmm import LMMFit
from .profile import parameter_names, profile_intervals

METHODS = ("profile", "wald")

Row = tuple[str, float, float, float]  # parameter, estimate, lower, upper


def confint(
    fit: LMMFit, method: str = "profile", level: float = 0.95, parm: Sequence[str] | None = None
) -> dict[str, Any]:
    """The intervals of ``fit``'s parameters (NaN where there is no bound)."""
    if method not in METHODS:
        raise InputError(f"method {method!r}: choose profile or wald", "method")
    if not 0.0 < level < 1.0:
        raise InputError(f"level {level} is not between 0 and 1", "level")
    extra: dict[str, Any] = {}
    if method == "profile":
        prof = profile_intervals(fit, level, list(parm) if parm else None)
        rows = [(r.name, r.estimate, r.lower, r.upper) for r in prof.intervals]
        messages, extra = list(prof.messages), {"deviance": prof.deviance}
    else:
        rows, messages = wald_rows(fit, level, parm), []
    return {"formula": fit.result.formula, "method": method, "level": level,
            "fit_method": fit.result.method, **extra,
            "intervals": [{"parameter": n, "estimate": e, "lower": lo, "upper": hi}
                          for n, e, lo, hi in rows],
            "messages": messages}  # fmt: skip


def wald_rows(fit: LMMFit, level: float, parm: Sequence[str] | None) -> list[Row]:
    """lme4's Wald table: the variance parameters' rows empty, the fixed effects'
    beta -/+ z SE (from the fit as it is, REML or ML)."""
    bounds = wald_intervals(fit.result, level)
    est = {fe.term: fe.estimate for fe in fit.result.fixed_effects}
    names = parameter_names(fit)
    chosen = _chosen(names, len(names) - len(est), parm)
    nan = math.nan
    return [(n, est.get(n, nan), *bounds.get(n, (nan, nan))) for n in names if n in chosen]


def _chosen(names: list[str], nvar: int, parm: Sequence[str] | None) -> set[str]:
    if not parm:
        return set(names)
    groups = {"theta_": names[:nvar], "beta_": names[nvar:]}
    out: set[str] = set()
    for p in parm:
        if p not in names and p not in groups:
            raise InputError(f"parm {p}: no such parameter ({', '.join(names)})", "parm")
        out.update(groups.get(p, [p]))
    return out
