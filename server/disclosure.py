"""Disclosure control for health data: what a fit may reveal about few people.

Off by default; on with ``--disclosure-control`` (settings ``min-group-size``,
``allow-row-outputs``, ``max-saturation``).  Then, in the worker:

- **oversaturated designs are refused** (FAILED_PRECONDITION, field model.formula),
  before the optimizer runs, when
    (a) p + q > max_saturation * n: the fixed effects (p, after the rank check) and
        the random-effect columns of the levels present (q = sum_k p_k * l_k) come
        close to the rows (n); default 0.5, at least two rows per parameter; or
    (b) an indicator column of X (a treatment-contrast dummy or an interaction of
        them: values 0 and 1) is 1 in fewer than ``min_group_size`` rows, or 0 in
        fewer: its coefficient would rest on so few people.  Counted exactly for
        GLMMs (their rows) and for unweighted LMMs with an intercept (X'X: a column
        in [0, 1] is 0/1 iff its sum of squares equals its sum); otherwise not
        checked, which the result says;
- **per-level conditional modes** (and their SDs) of levels with fewer than
  ``min_group_size`` rows are withheld from the ranef table, kept or written;
- **row-level outputs** (fitted values, residuals, the quantiles of the scaled
  residuals, whose min and max are single rows; predictions when they come) are
  withheld unless ``allow_row_outputs``.

What was withheld is stated in the result: a ``disclosure`` object in its JSON (and
``FitResult.disclosure``).  The servicer applies the current policy again to what it
returns from jobs run before it was switched on (``row_outputs_withheld``, ``kept``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..solver.errors import InputError

DEFAULT_MIN_GROUP_SIZE = 10
DEFAULT_MAX_SATURATION = 0.5


class DisclosureRefused(InputError):
    """The design would reveal too much about few rows (FAILED_PRECONDITION)."""


@dataclass(frozen=True)
class DisclosurePolicy:
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE
    allow_row_outputs: bool = False
    max_saturation: float = DEFAULT_MAX_SATURATION

    def check_design(self, data: Any) -> list[str]:
        """Raise ``DisclosureRefused`` for an oversaturated design; notes on what was
        not checked."""
        cp, layout = data.cp, data.layout
        n, p = cp.n, len(data.kept)
        q = sum(pk * int(np.count_nonzero(c)) for pk, c in zip(layout.p, cp.level_counts))
        if p + q > self.max_saturation * n:
            raise DisclosureRefused(
                f"disclosure control: the design is oversaturated ({p} fixed effects + {q} "
                f"random-effect columns for {n} rows; at most {self.max_saturation:g} "
                "parameters per row)", "formula",
            )  # fmt: skip
        counts = _indicator_counts(data)
        if counts is None:
            return ["fixed-effect cell sizes not checked (a weighted fit, or no intercept)"]
        for name, ones in counts.items():
            few = min(ones, n - ones)
            if few < self.min_group_size:
                raise DisclosureRefused(
                    f"disclosure control: fixed effect '{name}' rests on {few} of {n} rows (fewer "
                    f"than {self.min_group_size})", name,
                )  # fmt: skip
        return []

    def withhold_ranef(self, data: Any, table: Any) -> tuple[Any, list[dict[str, Any]]]:
        """The ranef table without the levels of fewer than ``min_group_size`` rows, and
        per group how many of its levels were withheld."""
        rows: dict[tuple[str, str], int] = {}
        for t, c in zip(data.design.terms, data.cp.level_counts):
            rows.update(((t.group, str(label)), int(k)) for label, k in zip(t.labels, c))
        groups, levels = table.column("group").to_pylist(), table.column("level").to_pylist()
        keep = [rows.get((g, str(v)), 0) >= self.min_group_size for g, v in zip(groups, levels)]
        withheld: dict[str, set[str]] = {}
        total: dict[str, set[str]] = {}
        for g, v, k in zip(groups, levels, keep):
            total.setdefault(g, set()).add(v)
            if not k:
                withheld.setdefault(g, set()).add(v)
        summary = [{"group": g, "levels": len(withheld[g]), "of": len(total[g])} for g in withheld]
        return table.filter(np.asarray(keep, dtype=bool)), summary

    def record(self, ranef: list[dict[str, Any]] | None, rows: list[str], notes: list[str]) -> dict:
        """The result's ``disclosure`` object.  ``ranef``: per group, levels withheld (None:
        no ranef table made); ``rows``: the row-level outputs withheld."""
        words = [f"conditional modes of {r['levels']} of {r['of']} levels of {r['group']} "
                 f"(fewer than {self.min_group_size} rows)" for r in ranef or []]  # fmt: skip
        return {
            "min_group_size": self.min_group_size,
            "max_saturation": self.max_saturation,
            "row_outputs_allowed": self.allow_row_outputs,
            "ranef_withheld": ranef or [],
            "withheld": words + rows,
            "notes": notes,
        }


def _indicator_counts(data: Any) -> dict[str, int] | None:
    """Rows where each indicator (0/1) column of X is 1; None when that cannot be told
    from what the fit keeps (weighted LMMs, or no intercept to sum the columns with)."""
    names = np.asarray(data.fixed_names)
    lo, hi = data.cp.x_min[data.kept], data.cp.x_max[data.kept]
    if data.buffer is not None:  # GLMMs keep their rows
        X = data.buffer.X[:, data.kept]
        binary = np.all((X == 0) | (X == 1), axis=0) & (lo == 0) & (hi == 1)
        return {str(n): int(k) for n, k in zip(names[binary], np.count_nonzero(X[:, binary], 0))}
    ones = np.flatnonzero((lo == 1) & (hi == 1))
    if data.design.weights is not None or not len(ones):
        return None
    XtX = data.cp.XtX
    sum_x, sum_x2 = XtX[ones[0]], np.diag(XtX)  # x in [0, 1]: sum x^2 = sum x iff x is 0/1
    binary = (lo == 0) & (hi == 1) & np.isclose(sum_x, sum_x2, rtol=1e-12, atol=1e-9)
    return {str(n): int(round(k)) for n, k in zip(names[binary], sum_x2[binary])}
