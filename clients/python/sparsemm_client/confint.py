"""lme4's ``confint(m)`` matrix as R prints it, from its JSON object.

The same text comes out of ``sparsemm confint`` in-process and against a server: both
format the object of ``solver.confint.confint`` here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _percent(p: float) -> str:
    """R's format.perc: '2.5 %', '97.5 %'."""
    return f"{100 * p:.3g} %"


def _num(x: Any) -> str:
    return "NA" if x is None or x != x else f"{x:.7g}"


def format_confint(table: Mapping[str, Any]) -> str:
    """The confint matrix (NA where there is no bound), then the profile's messages."""
    a = (1 - table["level"]) / 2
    rows = table["intervals"]
    width = max([len(r["parameter"]) for r in rows] + [1])
    lines = [f"{'':{width}} {_percent(a):>12} {_percent(1 - a):>12}"]
    for r in rows:
        lines.append(f"{r['parameter']:{width}} {_num(r['lower']):>12} {_num(r['upper']):>12}")
    return "\n".join(lines + list(table["messages"])) + "\n"
