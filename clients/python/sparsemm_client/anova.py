"""lme4's ``anova(m0, m1)`` table of a likelihood-ratio test, from its JSON object.

The same text comes out of ``sparsemm anova`` in-process and against a server: both
format the JSON of ``solver.inference.LikelihoodRatio.to_dict`` here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

STARS = ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, "."))


def _g(x: Any, digits: int = 5) -> str:
    if x is None or not math.isfinite(x):
        return "NA"
    return f"{x:.{digits}g}"


def _p(p: Any) -> str:
    if p is None or not math.isfinite(p):
        return "NA"
    return "< 2.2e-16" if p < 2.2e-16 else f"{p:.4g}"


def _stars(p: Any) -> str:
    if p is None or not math.isfinite(p):
        return ""
    return next((s for cut, s in STARS if p < cut), "")


def format_anova(test: Mapping[str, Any], data_name: str) -> str:
    """The anova table: the two models (m0 the smaller), then their line and the test."""
    small, big = test["small"], test["big"]
    rows = [["", "npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)"]]
    for name, m in (("m0", small), ("m1", big)):
        rows.append([name, str(m["npar"]), _g(m["aic"]), _g(m["bic"]), _g(m["loglik"]),
                     _g(m["deviance"]), "", "", ""])  # fmt: skip
    rows[2][6:] = [_g(test["chisq"]), str(test["df"]), _p(test["p"])]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = [
        " ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])])
        for r in rows
    ]
    table[2] += " " + _stars(test["p"])
    lines = [f"Data: {data_name}", "Models:", f"m0: {small['formula']}",
             f"m1: {big['formula']}", *(t.rstrip() for t in table), "---",
             "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1"]  # fmt: skip
    return "\n".join(lines) + "\n"
