"""``sparsemm confint`` and ``sparsemm plot``: inference and pictures after an LMM fit.

    sparsemm confint --data SOURCE --formula F [--ml] [--weights COL]
                     [--method profile|wald] [--level 0.95] [--parm NAME ...] [--format text|json]
    sparsemm plot caterpillar|profile|trace --data SOURCE --formula F [--ml] [--weights COL]
                  --out PATH.png|svg [--top K] [--level 0.95] [--parm NAME ...]

``confint --method profile`` is lme4's ``confint(m, method = "profile")`` (the profile is
of the ML deviance; a REML fit is refitted by ML, as lme4 does), ``--method wald`` its
``method = "Wald"`` (fixed effects only; the variance parameters' rows are empty, as
lme4's NA).  Exit status 2 with one line on stderr for bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from sparsemm import solver
from sparsemm.solver.inference import wald_intervals
from sparsemm.solver.profile import ProfileResult, parameter_names, profile_intervals
from sparsemm.solver.results import json_safe

COMMANDS = ("confint", "plot")


def add_commands(sub: Any) -> None:
    """The ``confint`` and ``plot`` subcommands, on ``sparsemm``'s subparsers."""
    c = sub.add_parser("confint", help="confidence intervals (profile likelihood or Wald)")
    _model_args(c)
    c.add_argument("--method", default="profile", choices=["profile", "wald"])
    c.add_argument("--format", default="text", choices=["text", "json"])
    p = sub.add_parser("plot", help="caterpillar, profile or optimizer-trace plot")
    p.add_argument("kind", choices=["caterpillar", "profile", "trace"])
    _model_args(p)
    p.add_argument("--out", required=True, help="PATH.png or PATH.svg")
    p.add_argument("--top", type=int, default=25, help="caterpillar: levels shown at each end")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="Parquet/CSV path or glob, duckdb:, sql:")
    p.add_argument("--formula", required=True, help="lme4 formula, e.g. 'y ~ x + (1 | g)'")
    p.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    p.add_argument("--weights", default=None, help="column of prior weights")
    p.add_argument("--level", type=float, default=0.95, help="confidence level")
    p.add_argument(
        "--parm", action="append", default=None, metavar="NAME",
        help="only these parameters (.sig01, .sigma, a fixed effect, theta_, beta_)",
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    try:
        _check(args)
        return _confint(args) if args.command == "confint" else _plot(args)
    except solver.InputError as exc:
        print(f"sparsemm: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output path that cannot be written
        print(f"sparsemm: error: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 2


def _check(args: argparse.Namespace) -> None:
    """Faults in the command line, before any data is read."""
    if not 0.0 < args.level < 1.0:
        raise solver.InputError(f"--level {args.level}: must be between 0 and 1", "level")
    if args.command == "plot":
        from sparsemm.plots import check_path

        check_path(args.out)
        if args.top < 1:
            raise solver.InputError(f"--top {args.top}: must be at least 1", "top")


def _fit(args: argparse.Namespace, trace: list[float] | None = None) -> solver.LMMFit:
    progress = None if trace is None else (lambda k, value: trace.append(value))
    return solver.fit(args.formula, args.data, reml=not args.ml, weights=args.weights,
                      progress=progress)  # fmt: skip


# ---- confint ----------------------------------------------------------------------


def _confint(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    fit = _fit(args)
    fit_s = time.perf_counter() - started
    if args.method == "profile":
        prof = profile_intervals(fit, args.level, args.parm)
        rows = [(r.name, r.estimate, r.lower, r.upper) for r in prof.intervals]
        messages, extra = list(prof.messages), {"deviance": prof.deviance}
    else:
        rows, messages, extra = _wald_rows(fit, args.level, args.parm), [], {}
    timings = {"fit_s": fit_s, "confint_s": time.perf_counter() - started - fit_s}
    if args.format == "json":
        out = {"formula": fit.result.formula, "method": args.method, "level": args.level,
               "fit_method": fit.result.method, **extra,
               "intervals": [{"parameter": n, "estimate": e, "lower": lo, "upper": hi}
                             for n, e, lo, hi in rows],
               "messages": messages, "timings": timings}  # fmt: skip
        print(json.dumps(json_safe(out)))
    else:
        sys.stdout.write(_table(rows, args.level, messages))
    return 0


def _wald_rows(fit: solver.LMMFit, level: float, parm: list[str] | None) -> list[tuple]:
    """lme4's Wald table: the variance parameters' rows empty, the fixed effects'
    beta -/+ z SE (from the fit as it is, REML or ML)."""
    bounds = wald_intervals(fit.result, level)
    est = {fe.term: fe.estimate for fe in fit.result.fixed_effects}
    names = parameter_names(fit)
    nvar = len(names) - len(est)
    chosen = _chosen(names, nvar, parm)
    nan = math.nan
    return [(n, est.get(n, nan), *bounds.get(n, (nan, nan))) for n in names if n in chosen]


def _chosen(names: list[str], nvar: int, parm: list[str] | None) -> set[str]:
    if not parm:
        return set(names)
    groups = {"theta_": names[:nvar], "beta_": names[nvar:]}
    out: set[str] = set()
    for p in parm:
        if p not in names and p not in groups:
            raise solver.InputError(f"--parm {p}: no such parameter ({', '.join(names)})", "parm")
        out.update(groups.get(p, [p]))
    return out


def _percent(p: float) -> str:
    """R's format.perc: '2.5 %', '97.5 %'."""
    return f"{100 * p:.3g} %"


def _table(rows: list[tuple], level: float, messages: list[str]) -> str:
    """The confint matrix as R prints it (NA where there is no bound)."""
    a = (1 - level) / 2
    width = max([len(r[0]) for r in rows] + [1])
    lines = [f"{'':{width}} {_percent(a):>12} {_percent(1 - a):>12}"]
    for name, _, lo, hi in rows:
        lines.append(f"{name:{width}} {_num(lo):>12} {_num(hi):>12}")
    return "\n".join(lines + messages) + "\n"


def _num(x: float) -> str:
    return "NA" if math.isnan(x) else f"{x:.7g}"


# ---- plot -------------------------------------------------------------------------


def _plot(args: argparse.Namespace) -> int:
    from sparsemm import plots

    trace: list[float] = []
    fit = _fit(args, trace)
    if args.kind == "caterpillar":
        out = plots.caterpillar(fit.ranef(), args.out, top=args.top)
    elif args.kind == "profile":
        prof: ProfileResult = profile_intervals(fit, args.level, args.parm)
        out = plots.profile_traces(prof, args.out)
    else:
        out = plots.optimizer_trace(trace, args.out, title=f"{fit.result.method} objective")
    print(out)
    return 0
