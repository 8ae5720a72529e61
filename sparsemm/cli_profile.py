"""``sparsemm confint`` and ``sparsemm plot``: inference and pictures after an LMM fit.

    sparsemm confint --data SOURCE --formula F [--ml] [--weights COL]
                     [--method profile|wald] [--level 0.95] [--parm NAME ...] [--format text|json]
    sparsemm confint --server HOST:PORT --job ID [--method ...] [--level ...] [--parm ...]
    sparsemm plot caterpillar|profile|trace --data SOURCE --formula F [--ml] [--weights COL]
                  --out PATH.png|svg [--top K] [--level 0.95] [--parm NAME ...]

``confint --method profile`` is lme4's ``confint(m, method = "profile")`` (the profile is
of the ML deviance; a REML fit is refitted by ML, as lme4 does), ``--method wald`` its
``method = "Wald"`` (fixed effects only; the variance parameters' rows are empty, as
lme4's NA); the table is ``solver.confint``'s, the text ``sparsemm_client.confint``'s.
With ``--server`` the intervals are of a finished fit job (its model refitted on the
server), the same text or JSON.  Exit status 2 with one line on stderr for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from sparsemm import solver
from sparsemm.solver.confint import confint
from sparsemm.solver.profile import ProfileResult, profile_intervals
from sparsemm.solver.results import json_safe
from sparsemm_client.confint import format_confint

COMMANDS = ("confint", "plot")


def add_commands(sub: Any) -> None:
    """The ``confint`` and ``plot`` subcommands, on ``sparsemm``'s subparsers."""
    c = sub.add_parser("confint", help="confidence intervals (profile likelihood or Wald)")
    _model_args(c)
    c.add_argument("--method", default="profile", choices=["profile", "wald"])
    c.add_argument("--format", default="text", choices=["text", "json"])
    c.add_argument("--server", default=None, help="HOST:PORT of a sparsemm server")
    c.add_argument("--job", default=None, help="with --server: a finished fit job's id")
    c.add_argument("--token-file", default=None, help="the server's bearer token")
    c.add_argument("--tls-ca", default=None, help="CA certificate (PEM) of a TLS server")
    p = sub.add_parser("plot", help="caterpillar, profile or optimizer-trace plot")
    p.add_argument("kind", choices=["caterpillar", "profile", "trace"])
    _model_args(p)
    p.add_argument("--out", required=True, help="PATH.png or PATH.svg")
    p.add_argument("--top", type=int, default=25, help="caterpillar: levels shown at each end")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="Parquet/CSV path or glob, duckdb:, sql:")
    p.add_argument("--formula", default=None, help="lme4 formula, e.g. 'y ~ x + (1 | g)'")
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
        if args.command == "confint":
            return _confint_remote(args) if _remote(args) else _confint(args)
        return _plot(args)
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
    if _remote(args):
        if not args.server or not args.job or args.data or args.formula or args.ml:
            raise solver.InputError("--job: give --server and --job, and no --data/--formula/"
                                    "--ml (the job's model is used)", "job")  # fmt: skip
    elif not args.data or not args.formula:
        raise solver.InputError("give --data and --formula", "data")
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


def _remote(args: argparse.Namespace) -> bool:
    return args.command == "confint" and bool(args.server or args.job)


def _confint(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    fit = _fit(args)
    fit_s = time.perf_counter() - started
    out = json_safe(confint(fit, args.method, args.level, args.parm))
    out["timings"] = {"fit_s": fit_s, "confint_s": time.perf_counter() - started - fit_s}
    _print(json.dumps(out), out, args.format)
    return 0


def _confint_remote(args: argparse.Namespace) -> int:
    """``_confint`` of a server's finished fit job: the same text or JSON."""
    from sparsemm.cli import _token, remote_error
    from sparsemm_client import Client, SparsemmError

    try:
        with Client(args.server, token=_token(args), tls_ca=args.tls_ca) as client:
            ci = client.confint(args.job, method=args.method, level=args.level, parm=args.parm)
    except SparsemmError as exc:
        return remote_error(exc, args.server)
    _print(ci.to_json(), ci.to_dict(), args.format)
    return 0


def _print(as_json: str, table: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        print(as_json)
    else:
        sys.stdout.write(format_confint(table))


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
