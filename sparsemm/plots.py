"""Diagnostic plots of a fit: presentation only, so outside ``solver/``.

    caterpillar(ranef, path, top=25)   conditional modes b with b -/+ 1.96 condsd, ordered,
                                       one panel per (group, term); with more than 2 top
                                       levels only the lowest and highest ``top`` are drawn
    profile_traces(profile, path)      zeta against each profiled parameter, with the
                                       -/+ z lines of the interval and its bounds
    optimizer_trace(values, path)      the objective at each evaluation of the optimizer
                                       (recorded by ``LinearMixedModel.fit``'s ``progress``)

Figures are drawn on matplotlib's Agg canvas without pyplot, so no display and no global
backend state are involved.  The format follows the file's extension (``.png`` or
``.svg``); ``size`` is in pixels at ``DPI`` (an SVG gets the same size in points * 100/72).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sparsemm.solver.errors import InputError
from sparsemm.solver.profile import ProfileResult

DPI = 100
FORMATS = (".png", ".svg")
DEFAULT_SIZE = (1200, 800)
Z95 = 1.959963984540054  # qnorm(0.975): the caterpillar's intervals


def check_path(path: str | Path) -> Path:
    """The output path, refused unless it ends in .png or .svg."""
    out = Path(path)
    if out.suffix.lower() not in FORMATS:
        raise InputError(f"{out}: the plot's file name must end in .png or .svg", "out")
    return out


def _figure(size: tuple[int, int]) -> Figure:
    width, height = size
    if width < 100 or height < 100:
        raise InputError(f"plot size {width} x {height} pixels is too small", "size")
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    out = check_path(path)
    fig.savefig(out, dpi=DPI, format=out.suffix.lower()[1:])
    return out


def _grid(n: int) -> tuple[int, int]:
    """Rows and columns for n panels, about as wide as high."""
    cols = max(1, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols


# ---- caterpillar --------------------------------------------------------------------


def _panels(ranef: pa.Table) -> list[tuple[str, str, pa.Table]]:
    """(group, term, rows) per random-effects term, in the table's order."""
    groups, terms = ranef.column("group").to_pylist(), ranef.column("term").to_pylist()
    keys = list(dict.fromkeys(zip(groups, terms)))
    out = []
    for g, t in keys:
        mask = pa.array([gg == g and tt == t for gg, tt in zip(groups, terms)])
        out.append((g, t, ranef.filter(mask)))
    return out


def _shown(values: np.ndarray, top: int) -> tuple[np.ndarray, bool]:
    """Indices in increasing order of value, only the lowest and highest ``top`` when
    there are more than 2 top; and whether levels were left out."""
    order = np.argsort(values, kind="stable")
    if len(order) <= 2 * top:
        return order, False
    return np.concatenate([order[:top], order[-top:]]), True


def _caterpillar_panel(ax: Axes, group: str, term: str, rows: pa.Table, top: int) -> None:
    values = rows.column("condval").to_numpy(zero_copy_only=False)
    sds = rows.column("condsd").to_numpy(zero_copy_only=False)
    levels = rows.column("level").to_pylist()
    idx, cut = _shown(values, top)
    y = np.arange(len(idx), dtype=float)
    if cut:  # a gap where the middle levels were left out
        y[top:] += 1.0
        ax.axhline(top, color="0.7", lw=0.8, ls=":")
    ax.errorbar(values[idx], y, xerr=Z95 * np.nan_to_num(sds[idx]), fmt="o", ms=3,
                color="tab:blue", ecolor="0.45", elinewidth=0.8, capsize=0)  # fmt: skip
    ax.axvline(0.0, color="0.3", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels([str(levels[i]) for i in idx], fontsize=max(4, min(8, 400 // len(y))))
    ax.set_ylim(-1, y[-1] + 1 if len(y) else 1)
    title = f"{group}: {term}"
    if cut:
        title += f"\nlowest and highest {top} of {len(values)} levels"
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelsize=8)


def caterpillar(
    ranef: pa.Table, path: str | Path, top: int = 25, size: tuple[int, int] = DEFAULT_SIZE
) -> Path:
    """Conditional modes with -/+ 1.96 conditional SDs (lme4's dotplot(ranef(m)))."""
    if top < 1:
        raise InputError(f"--top {top}: show at least one level at each end", "top")
    check_path(path)
    panels = _panels(ranef)
    if not panels:
        raise InputError("the model has no random effects to plot", "formula")
    fig = _figure(size)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (group, term, rows) in zip(axes, panels):
        _caterpillar_panel(ax, group, term, rows, top)
    fig.suptitle(
        f"Conditional modes -/+ 1.96 conditional SD (at most {top} lowest and {top} "
        "highest levels per panel)", fontsize=10,
    )  # fmt: skip
    fig.tight_layout()
    return _save(fig, path)


# ---- profile ------------------------------------------------------------------------


def profile_traces(
    profile: ProfileResult, path: str | Path, size: tuple[int, int] = DEFAULT_SIZE
) -> Path:
    """zeta(x) for each profiled parameter, with the interval's -/+ z and its bounds."""
    check_path(path)
    if not profile.traces:
        raise InputError("no parameters were profiled", "which")
    fig = _figure(size)
    nrows, ncols = _grid(len(profile.traces))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    z = profile.quantile
    for ax, trace, row in zip(axes, profile.traces, profile.intervals):
        ax.plot(trace.values, trace.zeta, "o-", ms=3, lw=1, color="tab:blue")
        for level in (-z, z):
            ax.axhline(level, color="tab:red", lw=0.8, ls="--")
        for bound in (row.lower, row.upper):
            if math.isfinite(bound):
                ax.axvline(bound, color="0.5", lw=0.8, ls=":")
        ax.axhline(0.0, color="0.3", lw=0.6)
        ax.set_title(f"{row.name}: [{row.lower:.4g}, {row.upper:.4g}]", fontsize=9)
        ax.set_ylabel("zeta", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in axes[len(profile.traces) :]:
        ax.set_visible(False)
    fig.suptitle(f"Profile zeta, {100 * profile.level:g}% interval at -/+ {z:.3f}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# ---- optimizer trace ----------------------------------------------------------------


def optimizer_trace(
    values: Sequence[float], path: str | Path, size: tuple[int, int] = DEFAULT_SIZE,
    title: str = "Optimizer trace",
) -> Path:  # fmt: skip
    """The objective at each evaluation with the best value so far, and below it the
    distance to the final best on a log scale (how fast the optimizer converged)."""
    check_path(path)
    y = np.asarray(values, dtype=float)
    finite = np.isfinite(y)
    if not finite.any():
        raise InputError("the optimizer recorded no finite evaluations", "trace")
    fig = _figure(size)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    x = np.arange(1, len(y) + 1)
    best = np.minimum.accumulate(np.where(finite, y, np.inf))
    top.plot(x[finite], y[finite], ".", ms=4, color="tab:blue", label="objective")
    top.step(x, best, where="post", color="tab:red", lw=1, label="best so far")
    top.set_ylabel("objective")
    top.legend(fontsize=8)
    top.set_title(f"{title}: {len(y)} evaluations, best {best[-1]:.10g}", fontsize=10)
    excess = np.maximum(y[finite] - best[-1], 1e-12)
    bottom.semilogy(x[finite], excess, ".", ms=4, color="tab:blue")
    bottom.step(x, np.maximum(best - best[-1], 1e-12), where="post", color="tab:red", lw=1)
    bottom.set_ylabel("objective - best (0 at 1e-12)")
    bottom.set_xlabel("evaluation")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _save(fig, path)
