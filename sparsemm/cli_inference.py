"""Inference after the fit on the command line (issue 6), registered by ``sparsemm.cli``:

    sparsemm predict --data TRAIN --formula F [--ml] [--weights COL] --newdata SOURCE
                     [--re-form NA|'~(1 | g)'] [--no-new-levels] [--se-fit] --out PATH.parquet
    sparsemm fit ... [--satterthwaite] [--icc]

``predict`` fits the model (REML unless ``--ml``), then writes one row per new row
(``fit``, and ``se_fit`` with ``--se-fit``; null where the row has missing values) and
prints one line.  ``fit --satterthwaite`` adds lmerTest's ``df`` and ``p_value`` to every
fixed effect of the JSON (columns ``df`` and ``Pr(>|t|)`` of the text summary); ``fit
--icc`` adds an ``icc`` object (performance::icc, see ``solver.icc``).  Both are for
linear mixed models fitted in-process.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from typing import Any

import pyarrow.parquet as pq

from sparsemm import solver
from sparsemm.solver.icc import icc
from sparsemm.solver.predict import select_columns
from sparsemm.solver.satterthwaite import satterthwaite


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
    p.add_argument("--data", required=True, help="the rows to fit (any fit --data SOURCE)")
    p.add_argument("--formula", required=True, help="lme4 formula, e.g. 'y ~ x + (1 | g)'")
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
    """--satterthwaite and --icc need an in-process linear mixed model."""
    asked = [f"--{name}" for name in ("satterthwaite", "icc") if getattr(args, name, False)]
    if asked and args.family != "gaussian":
        raise solver.InputError(f"{asked[0]} needs a linear mixed model (--family gaussian)")
    if asked and args.server:
        raise solver.InputError(f"{asked[0]} is not available with --server yet")


def augment(out: dict[str, Any], fitted: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The JSON contract of a fit plus the inference asked for."""
    if getattr(args, "satterthwaite", False):
        for entry, test in zip(out["fixed_effects"], satterthwaite(fitted)):
            entry["df"], entry["p_value"] = test.df, test.p_value
    if getattr(args, "icc", False):
        out["icc"] = asdict(icc(fitted))
    return out


def predict_command(args: argparse.Namespace) -> int:
    """Fit, predict on --newdata, write --out, print one line."""
    _check_out(args.out)
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


def _check_out(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise solver.InputError(f"--out {path}: directory {folder} does not exist", "out")
