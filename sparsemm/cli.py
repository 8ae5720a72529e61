"""The ``sparsemm`` command: ``sparsemm fit ...`` (DESIGN.md §5); ``cli_service`` adds
``sparsemm serve`` and ``sparsemm anova``.

``fit --server HOST:PORT`` fits through the thin client (``sparsemm_client``) and prints
the same text or JSON as an in-process fit.  Exit status 0 on success, 2 on bad input
with one line on stderr naming the fault (1 when the server cannot be reached).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from sparsemm import cli_inference, cli_profile, solver
from sparsemm.solver.results import evaluation_timings, json_safe
from sparsemm.summary import summary_text


class BadInput(Exception):
    """A fault in the command line itself (an option that cannot be honoured)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparsemm", description="Sparse mixed models, lme4-style.")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit a mixed model")
    f.add_argument(
        "--data", required=True, help="Parquet/CSV path or glob, duckdb:PATH:TABLE, sql:SELECT ..."
    )
    f.add_argument("--formula", required=True, help="lme4 formula, e.g. 'y ~ x + (1 | g)'")
    f.add_argument("--family", default="gaussian", choices=["gaussian", "binomial", "poisson"])
    f.add_argument("--link", default=None)
    f.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    f.add_argument("--weights", default=None, help="column of prior weights")
    f.add_argument("--format", default="text", choices=["text", "json"])
    f.add_argument("--server", default=None, help="HOST:PORT of a sparsemm server")
    f.add_argument(
        "--token-file",
        default=None,
        help="file holding the server's bearer token (default: $SPARSEMM_TOKEN)",
    )
    f.add_argument("--tls-ca", default=None, help="CA certificate (PEM) of a TLS server")
    f.add_argument("--ranef", default=None, help="write conditional modes to PATH.parquet")
    f.add_argument(
        "--fitted", default=None, help="write fitted values and residuals to PATH.parquet"
    )
    f.add_argument(
        "--ordering",
        default="auto",
        choices=["auto", "schur", "iterative", "metis", "amd", "nesdis", "best", "natural"],
    )
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    cli_inference.add_arguments(sub, f)
    cli_profile.add_commands(sub)
    from sparsemm import cli_service  # here: it imports this module's helpers

    cli_service.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in cli_profile.COMMANDS:
        return cli_profile.main(args)
    if hasattr(args, "handler"):  # commands registered by other modules
        return int(args.handler(args))
    try:
        if args.command == "predict":
            return cli_inference.predict_command(args)
        return _fit_remote(args) if args.server else _fit(args)
    except (solver.InputError, BadInput) as exc:
        print(f"sparsemm: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output path that cannot be written
        print(f"sparsemm: error: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 2


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                return f.read().strip() or None
        except OSError as exc:
            raise BadInput(f"--token-file {args.token_file}: {exc.strerror}") from None
    return os.environ.get("SPARSEMM_TOKEN") or None


def _fit_remote(args: argparse.Namespace) -> int:
    """``_fit`` on a server, through the thin client: the same text or JSON."""
    from sparsemm_client import Client, SparsemmError

    _check_options(args)
    show = not args.quiet and sys.stderr.isatty()
    try:
        with Client(args.server, token=_token(args), tls_ca=args.tls_ca) as client:
            with _Progress(show) as prog:
                fit = client.fit(
                    args.formula, args.data, ml=args.ml, weights=args.weights,
                    family=args.family, link=args.link, ordering=args.ordering,
                    ranef=bool(args.ranef), fitted=bool(args.fitted),
                    residual_quantiles=args.format == "text", progress=prog.event,
                    satterthwaite=args.satterthwaite, icc=args.icc,
                )  # fmt: skip
            if args.ranef:
                pq.write_table(fit.ranef(), args.ranef)
            if args.fitted:
                pq.write_table(fit.fitted(), args.fitted)
    except SparsemmError as exc:
        return remote_error(exc, args.server)
    if args.format == "json":
        print(fit.to_json())
    else:
        sys.stdout.write(fit.summary(args.data))
    return 0


def remote_error(exc: Any, server: str) -> int:
    """One line on stderr for a ``SparsemmError``; the exit status: 2 for bad input, else 1."""
    import grpc

    message = exc.message.splitlines()[0] if exc.message else str(exc.code)
    if exc.code == grpc.StatusCode.UNAVAILABLE:
        message = f"cannot reach the sparsemm server at {server}: {message}"
    print(f"sparsemm: error: {message}", file=sys.stderr)
    return 2 if exc.bad_input else 1


def _check_options(args: argparse.Namespace) -> None:
    if args.family == "gaussian" and args.link not in (None, "identity"):
        raise BadInput(f"--link {args.link}: the gaussian family uses the identity link")
    cli_inference.check_fit_options(args)


def _fit(args: argparse.Namespace) -> int:
    _check_options(args)
    show = not args.quiet and sys.stderr.isatty()
    started = time.perf_counter()
    with _Progress(show) as prog:
        data = solver.prepare(
            args.formula, args.data, weights=args.weights, progress=prog.rows, family=args.family
        )
        read_s = time.perf_counter() - started
        if args.family == "gaussian":
            model = solver.LinearMixedModel(data, reml=not args.ml, ordering=args.ordering)
        else:
            fam = solver.family(args.family, args.link)
            model = solver.GeneralizedLinearMixedModel(data, fam, ordering=args.ordering)
        fitted = model.fit(progress=prog.iteration)
    result = fitted.result
    timings = {"read_s": read_s, "fit_s": time.perf_counter() - started - read_s}
    timings |= evaluation_timings(fitted.evaluation_s)
    outputs_started = time.perf_counter()
    scaled = _write_outputs(fitted, args)
    if args.ranef or args.fitted:
        timings["outputs_s"] = time.perf_counter() - outputs_started
    out = cli_inference.augment(result.to_dict(), fitted, args)
    timings["total_s"] = time.perf_counter() - started
    if args.format == "json":
        out["timings"] = timings
        print(json.dumps(json_safe(out)))
    else:
        sys.stdout.write(summary_text(out, args.data, scaled))
    return 0


def _write_outputs(
    fitted: solver.LMMFit | solver.GLMMFit, args: argparse.Namespace
) -> np.ndarray | None:
    if args.ranef:
        pq.write_table(fitted.ranef(), args.ranef)
    if not args.fitted and args.format != "text":
        return None
    table = fitted.fitted()
    if args.fitted:
        pq.write_table(table, args.fitted)
    return table.column("pearson").to_numpy()  # lme4's "Scaled residuals"


class _Progress:
    """Progress bars on stderr for the row pass and the optimizer."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self._rows: tqdm | None = None
        self._iters: tqdm | None = None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        for bar in (self._rows, self._iters):
            if bar is not None:
                bar.close()

    def rows(self, stage: str, done: int) -> None:
        if not self.show:
            return
        if self._rows is None:
            self._rows = tqdm(desc="rows read", unit=" rows", unit_scale=True, file=sys.stderr)
        self._rows.update(done - self._rows.n)

    def event(self, progress: Any) -> None:
        """A progress event from a server (``sparsemm_client.Progress``)."""
        if progress.kind == "rows":
            self.rows(progress.stage, progress.rows)
        elif progress.kind == "iteration":
            self.iteration(progress.evaluation, progress.objective)

    def iteration(self, k: int, value: float) -> None:
        if not self.show:
            return
        if self._iters is None:
            self._iters = tqdm(desc="optimizer", unit=" evals", file=sys.stderr)
        self._iters.update(1)
        self._iters.set_postfix(objective=f"{value:.6f}", refresh=False)
