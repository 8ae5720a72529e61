"""lme4-style text summary of a fit (``summary(lmer(...))``)."""

from __future__ import annotations

import numpy as np

from sparsemm.solver import FitResult


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or not np.isfinite(x):
        return ""
    return f"{x:.{digits}g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.3e}"


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
        ]
        out.append(" " + " ".join(cells).rstrip())
    return out


def random_effects_lines(result: FitResult) -> list[str]:
    rows = [["Groups", "Name", "Variance", "Std.Dev.", "Corr"]]
    corr: dict[tuple[str, str], list[str]] = {}
    for vc in result.variance_components:
        if vc.term2 is not None:
            corr.setdefault((vc.group, vc.term2), []).append(f"{vc.corr:.2f}")
    last = None
    for vc in result.variance_components:
        if vc.term2 is not None:
            continue
        group = vc.group if vc.group != last else ""
        last = vc.group
        rows.append([group, vc.term or "", _fmt(vc.variance), _fmt(vc.sd),
                     " ".join(corr.get((vc.group, vc.term or ""), []))])  # fmt: skip
    return _table(rows, {2, 3})


def fixed_effects_lines(result: FitResult) -> list[str]:
    stat = "t value" if result.family == "gaussian" else "z value"
    rows = [["", "Estimate", "Std. Error", stat]]
    for fe in result.fixed_effects:
        rows.append([fe.term, f"{fe.estimate:.6g}", f"{fe.std_error:.4g}", f"{fe.statistic:.3f}"])
    return _table(rows, {1, 2, 3})


def summary_text(result: FitResult, data_name: str, scaled_resid: np.ndarray | None) -> str:
    kind = "REML" if result.method == "REML" else "maximum likelihood"
    lines = [f"Linear mixed model fit by {kind} ['lmerMod']",
             f"Formula: {result.formula}", f"   Data: {data_name}", ""]  # fmt: skip
    if result.reml_criterion is not None:
        lines.append(f"REML criterion at convergence: {result.reml_criterion:.4f}")
    else:
        lines += [
            "      AIC       BIC    logLik  deviance",
            f" {result.aic:8.4f} {result.bic:8.4f} {result.loglik:8.4f} {result.deviance:8.4f}",
        ]
    if scaled_resid is not None and len(scaled_resid):
        q = np.quantile(scaled_resid, [0, 0.25, 0.5, 0.75, 1.0])
        lines += ["", "Scaled residuals: "]
        lines += _table([["Min", "1Q", "Median", "3Q", "Max"], [f"{v:.4f}" for v in q]],
                        {0, 1, 2, 3, 4})  # fmt: skip
    lines += ["", "Random effects:"] + random_effects_lines(result)
    groups = ", ".join(f"{g}, {n}" for g, n in result.ngroups.items())
    lines.append(f"Number of obs: {result.nobs}, groups:  {groups}")
    lines += ["", "Fixed effects:"] + fixed_effects_lines(result)
    for msg in result.messages:
        lines.append(msg)
    return "\n".join(lines) + "\n"
