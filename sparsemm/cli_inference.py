"""Inference after the fit on the command line (issue 6), registered by ``sparsemm.cli``:

    sparsemm predict --data TRAIN --formula F [--ml] [--weights COL] --newdata SOURCE
                     [--re-form NA|'~(1 | g)'] [--no-new-levels] [--se-fit] --out PATH.parquet
    sparsemm predict --server HOST:PORT --job ID --newdata SOURCE [...] --out PATH.parquet
    sparsemm fit ... [--satterthwaite] [--icc]

``predict`` fits the model (REML unless ``--ml``), then writes one row per new row
(``fit``, and ``se_fit`` with ``--se-fit``; null where the row has missing values) and
prints one line.  With ``--server`` it predicts from a finished fit job (``--job``) on
new rows from a source on the server (the server refits the job's model), and writes
the same file and line.  ``fit --satterthwaite`` adds lmerTest's ``df`` and ``p_value`` to every
fixed effect of the JSON (columns ``df`` and ``Pr(>|t|)`` of the text summary); ``fit
--icc`` adds an ``icc`` object (performance::icc, see ``solver.icc``).  Both are for
linear mixed models, in-process or with ``--server`` (computed by the server's worker).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import pyarrow.parquet as pq

from sparsemm import solver
from sparsemm.solver.inference import add_inference
from sparsemm.solver.predict import select_columns


def add_arguments(sub: Any, fit: argparse.ArgumentParser) -> None:
    """The ``predict`` command and the inference options of ``fit``."""
    fit.add_argument(
        "--satterthwaite", action="store_true",
        help="Satterthwaite df and p-values of the fixed effects (lmerTest's)",
    )  # fmt: skip
    fit.add_argument(
        "--icc", action="store_true",
        help="intraclass correlation (performance::icc) and design effects",
    )  # fmt: skip
    p = sub.add_parser("predict", help="fit a linear mixed model, then predict on new data")
    p.add_argument("--data", default=None, help="the rows to fit (any fit --data SOURCE)")
    p.add_argument("--formula", default=None, help="lme4 formula, e.g. 'y ~ x + (1 | g)'")
    p.add_argument("--server", default=None, help="HOST:PORT of a sparsemm server")
    p.add_argument("--job", default=None, help="with --server: a finished fit job's id")
    p.add_argument("--token-file", default=None, help="the server's bearer token")
    p.add_argument("--tls-ca", default=None, help="CA certificate (PEM) of a TLS server")
    p.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    p.add_argument("--weights", default=None, help="column of prior weights")
    p.add_argument("--newdata", required=True, help="the rows to predict (a SOURCE)")
    p.add_argument(
        "--re-form", default=None, metavar="TERMS",
        help="random-effects terms to include: 'NA' for none, or e.g. '~(1 | Subject)' "
        "(default: all)",
    )  # fmt: skip
    p.add_argument(
        "--no-new-levels", action="store_true",
        help="refuse grouping levels not in the fit (default: population-level prediction)",
    )  # fmt: skip
    p.add_argument("--se-fit", action="store_true", help="standard errors of the fixed part")
    p.add_argument("--out", required=True, help="write the predictions to PATH.parquet")


def check_fit_options(args: argparse.Namespace) -> None:
    """--satterthwaite and --icc need a linear mixed model."""
    asked = [f"--{name}" for name in ("satterthwaite", "icc") if getattr(args, name, False)]
    if asked and args.family != "gaussian":
        raise solver.InputError(f"{asked[0]} needs a linear mixed model (--family gaussian)")


def augment(out: dict[str, Any], fitted: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The JSON contract of a fit plus the inference asked for (as a server's worker)."""
    asked = (getattr(args, "satterthwaite", False), getattr(args, "icc", False))
    return add_inference(out, fitted, *asked) if any(asked) else out


def predict_command(args: argparse.Namespace) -> int:
    """Fit, predict on --newdata, write --out, print one line."""
    _check_out(args.out)
    if args.server or args.job:
        return _predict_remote(args)
    if not args.data or not args.formula:
        raise solver.InputError("give --data and --formula (or --server and --job)", "data")
    try:
        solver.open_source(args.newdata).schema()
    except solver.InputError as exc:
        raise solver.InputError(f"--newdata: {exc}", "newdata") from None
    data = solver.prepare(args.formula, args.data, weights=args.weights)
    select_columns(data.design, args.re_form)  # a bad --re-form fails before the fit
    fitted = solver.LinearMixedModel(data, reml=not args.ml).fit()
    table = fitted.predict(
        args.newdata, re_form=args.re_form, allow_new_levels=not args.no_new_levels,
        se_fit=args.se_fit,
    )  # fmt: skip
    pq.write_table(table, args.out)
    nulls = table.column("fit").null_count
    res = fitted.result
    print(
        f"{table.num_rows} predictions ({nulls} null for missing values) from a "
        f"{res.method} fit to {res.nobs} rows written to {args.out}"
    )
    return 0


def _predict_remote(args: argparse.Namespace) -> int:
    """``predict_command`` from a finished fit job of a server: the same file and line."""
    from sparsemm.cli import _token, remote_error
    from sparsemm_client import Client, SparsemmError

    if not args.server or not args.job or args.data or args.formula or args.ml or args.weights:
        raise solver.InputError("--job: give --server and --job, and no --data/--formula/"
                                "--ml/--weights (the job's model is used)", "job")  # fmt: skip
    try:
        with Client(args.server, token=_token(args), tls_ca=args.tls_ca) as client:
            table = client.predict(
                args.job, args.newdata, re_form=args.re_form,
                allow_new_levels=not args.no_new_levels, se_fit=args.se_fit,
            )  # fmt: skip
    except SparsemmError as exc:
        return remote_error(exc, args.server)
    account = json.loads(table.schema.metadata[b"sparsemm.prediction"])
    if account["withheld"]:
        print("sparsemm: error: the server's disclosure control withholds row-level "
              "predictions", file=sys.stderr)  # fmt: skip
        return 1
    pq.write_table(table.replace_schema_metadata(None), args.out)
    print(
        f"{account['rows']} predictions ({account['null_rows']} null for missing values) "
        f"from a {account['fit_method']} fit to {account['fit_nobs']} rows written to {args.out}"
    )
    return 0


def _check_out(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise solver.InputError(f"--out {path}: directory {folder} does not exist", "out")
