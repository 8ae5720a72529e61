"""lme4-style text summary (``summary(lmer(...))``) of a result in the JSON contract.

Works on the contract's dict (DESIGN.md §5), so the same text comes out of an
in-process fit (``sparsemm.summary``) and a remote one.  JSON has no NaN: a ``None``
where a number belongs prints as a NaN would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

QUANTILE_NAMES = ("Min", "1Q", "Median", "3Q", "Max")


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or not math.isfinite(x):
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


def random_effects_lines(result: Mapping[str, Any]) -> list[str]:
    rows = [["Groups", "Name", "Variance", "Std.Dev.", "Corr"]]
    corr: dict[tuple[str, str], list[str]] = {}
    for vc in result["variance_components"]:
        if vc["term2"] is not None:
            corr.setdefault((vc["group"], vc["term2"]), []).append(f"{_num(vc['corr']):.2f}")
    last = None
    for vc in result["variance_components"]:
        if vc["term2"] is not None:
            continue
        group = vc["group"] if vc["group"] != last else ""
        last = vc["group"]
        term = vc["term"] or ""
        rows.append(
            [
                group,
                term,
                _fmt(vc["variance"]),
                _fmt(vc["sd"]),
                " ".join(corr.get((vc["group"], term), [])),
            ]
        )
    return _table(rows, {2, 3})


def _pval(p: Any) -> str:
    """R's format.pval: "<2e-16" below machine precision, else 3 significant digits."""
    return "<2e-16" if _num(p) < 2.2e-16 else f"{_num(p):.3g}"


def fixed_effects_lines(result: Mapping[str, Any]) -> list[str]:
    """Estimate, Std. Error, statistic; with Satterthwaite entries (``df``, ``p_value``)
    lmerTest's columns: Estimate, Std. Error, df, t value, Pr(>|t|)."""
    stat = "t value" if result["family"] == "gaussian" else "z value"
    satt = any("df" in fe for fe in result["fixed_effects"])
    rows = [["", "Estimate", "Std. Error"] + ["df"] * satt + [stat] + ["Pr(>|t|)"] * satt]
    for fe in result["fixed_effects"]:
        row = [fe["term"], f"{_num(fe['estimate']):.6g}", f"{_num(fe['std_error']):.4g}"]
        if satt:
            row.append(f"{_num(fe.get('df')):.2f}")
        row.append(f"{_num(fe['statistic']):.3f}")
        if satt:
            row.append(_pval(fe.get("p_value")))
        rows.append(row)
    return _table(rows, set(range(1, len(rows[0]))))


def icc_lines(icc: Mapping[str, Any]) -> list[str]:
    """The ``icc`` object of a fit (performance::icc's numbers and design effects)."""
    lines = ["", "Intraclass correlation (performance::icc):"]
    if icc["adjusted"] is None:
        return lines + [f" not available: {icc.get('note') or 'no random-effect variance'}"]
    lines.append(f" Adjusted ICC: {_num(icc['adjusted']):.4f}   "
                 f"Conditional ICC: {_num(icc['conditional']):.4f}")  # fmt: skip
    if icc.get("design_effect"):
        parts = ", ".join(f"{g} {_num(v):.4g}" for g, v in icc["design_effect"].items())
        lines.append(f" Design effect, 1 + (n/J - 1) ICC: {parts}")
    return lines


def _header(result: Mapping[str, Any]) -> list[str]:
    if result["family"] == "gaussian":
        kind = "REML" if result["method"] == "REML" else "maximum likelihood"
        return [f"Linear mixed model fit by {kind} ['lmerMod']"]
    return [
        "Generalized linear mixed model fit by maximum likelihood (Laplace Approximation) "
        "['glmerMod']",
        f" Family: {result['family']}  ( {result['link']} )",
    ]


def format_summary(
    result: Mapping[str, Any], data_name: str, residual_quantiles: Sequence[float] | None
) -> str:
    """The summary text; ``residual_quantiles`` are min, 1Q, median, 3Q, max of the
    scaled residuals (omitted when None or empty)."""
    lines = _header(result) + [f"Formula: {result['formula']}", f"   Data: {data_name}", ""]
    if result["method"] == "REML":
        lines.append(f"REML criterion at convergence: {_num(result['reml_criterion']):.4f}")
    else:
        aic, bic, loglik, dev = (_num(result[k]) for k in ("aic", "bic", "loglik", "deviance"))
        lines += [
            "      AIC       BIC    logLik  deviance",
            f" {aic:8.4f} {bic:8.4f} {loglik:8.4f} {dev:8.4f}",
        ]
    if residual_quantiles:
        lines += ["", "Scaled residuals: "]
        lines += _table(
            [list(QUANTILE_NAMES), [f"{_num(v):.4f}" for v in residual_quantiles]], {0, 1, 2, 3, 4}
        )
    lines += ["", "Random effects:"] + random_effects_lines(result)
    groups = ", ".join(f"{g}, {n}" for g, n in result["ngroups"].items())
    lines.append(f"Number of obs: {result['nobs']}, groups:  {groups}")
    lines += ["", "Fixed effects:"] + fixed_effects_lines(result)
    if result.get("icc") is not None:
        lines += icc_lines(result["icc"])
    for msg in result["messages"]:
        lines.append(msg)
    lines += disclosure_lines(result.get("disclosure"))
    return "\n".join(lines) + "\n"


def disclosure_lines(disclosure: Mapping[str, Any] | None) -> list[str]:
    """What a server's disclosure control withheld (nothing when it was off)."""
    if not disclosure:
        return []
    out = [f"Disclosure control: withheld {w}" for w in disclosure["withheld"]]
    return out + [f"Disclosure control: {note}" for note in disclosure["notes"]]
