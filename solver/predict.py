"""Predictions of a fitted LMM on new rows: lme4's ``predict(m, newdata, re.form, ...)``.

For a new row i,

    fit_i    = x_i' beta_hat + offset_i + sum_{k in R} sum_{j in S_k} z_ikj b_hat_k[level_ik, j]
    se_fit_i = sqrt(x_i' Var(beta) x_i),   Var(beta) = sigma^2 R_X^-1 R_X^-T   (fixed part only)

- ``x_i`` is the row of the fixed-effects design built with the fit's own formulaic spec:
  the fit's factor levels, treatment contrasts and columns (after the rank check), so a
  coefficient means the same thing as in the fit.  A factor level of a fixed-effects (or
  random-slope) column that the fit never saw cannot be coded: ``InputError`` naming the
  column and the value.  Offsets (``offset(expr)``) are evaluated on the new rows and added.
- ``b_hat`` are the conditional modes of the fit.  ``level_ik`` is the row's level of
  grouping factor k; a level the fit did not see, or a missing grouping value, has
  ``b = 0`` (the population-level prediction for that term), as lme4's
  ``allow.new.levels = TRUE``; with ``allow_new_levels=False`` it is an ``InputError``.
- ``R`` and ``S_k`` come from ``re_form``: ``None`` includes every term and column (lme4's
  ``re.form = NULL``); ``"NA"`` (or ``"~0"``) none (``re.form = NA``, the population-level
  prediction ``x_i' beta + offset_i``); bar terms such as ``"~(1 | Subject)"`` select,
  among the model's terms with that grouping factor, the columns named by their left-hand
  side, as lme4's ``mkNewReTrms`` matches them: ``(1 | Subject)`` on a
  ``(Days | Subject)`` fit uses the intercepts only.

Missing values: the output has exactly one row per new row, in order.  A row with a
missing value (null, or NaN in a float column) in a column the fixed part, an offset or
an included random-slope term needs, or whose evaluated design is not finite (``log(0)``),
gets a null prediction (and a null ``se_fit``); it is not dropped.  A missing grouping
value is a new level (as lme4 with ``na.action = na.pass``).  The response is not needed.

The new rows are read batch by batch (a map over batches; nothing is kept but the output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.linalg as la
from formulaic import Formula

from .design import Design, TermDesign, _evaluate, is_categorical_type, to_pandas
from .errors import DataError, FormulaError
from .formula import RandomTerm, _to_python, parse_formula
from .frame import FrameInfo, Levels, _missing, _mixed_key
from .sources import DEFAULT_BATCH_ROWS, Source, open_source

if TYPE_CHECKING:
    from .lmm import LMMFit

NO_RANDOM = ("NA", "~NA", "0", "~0", "~ 0")


@dataclass(frozen=True)
class Plan:
    """What the prediction reads and computes, fixed before the first batch."""

    design: Design
    kept: np.ndarray
    beta: np.ndarray
    b: np.ndarray
    offsets: tuple[int, ...]  # where each model term's block starts in b
    selected: tuple[np.ndarray, ...]  # per model term: mask of its columns in the prediction
    formula_columns: tuple[str, ...]  # new-data columns the fixed part, offsets and slopes read
    group_columns: tuple[str, ...]  # grouping columns of the included terms
    allow_new_levels: bool
    RXinv_sigma: np.ndarray | None  # sigma R_X^-1, for se_fit

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.formula_columns + self.group_columns))


def predict(
    fit: LMMFit,
    newdata: str | pa.Table | Source,
    re_form: str | None = None,
    allow_new_levels: bool = True,
    se_fit: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> pa.Table:
    """Predictions for the rows of ``newdata``: column ``fit`` (and ``se_fit``), in row
    order, null where a row has missing values (see the module docstring)."""
    plan = make_plan(fit, re_form, allow_new_levels, se_fit)
    source = open_source(newdata)
    schema = source.schema()
    _check_schema(schema, plan)
    columns = plan.columns or tuple(schema.names[:1])  # none needed: one, to count rows
    fits, ses = [], []
    for batch in source.batches(columns, batch_rows):
        f, s = predict_batch(plan, batch)
        fits.append(f)
        ses.append(s)
    out = {"fit": _nullable(fits)}
    if se_fit:
        out["se_fit"] = _nullable(ses)
    return pa.table(out)


def make_plan(fit: LMMFit, re_form: str | None, allow_new_levels: bool, se_fit: bool) -> Plan:
    data = fit.model.data
    design = data.design
    selected = select_columns(design, re_form)
    formula_cols = set(design.fixed_spec.rhs.required_variables)  # type: ignore[attr-defined]
    for spec in design.offset_specs:
        formula_cols |= set(spec.required_variables)  # type: ignore[attr-defined]
    groups: list[str] = []
    for t, mask in zip(design.terms, selected):
        if mask.any():
            formula_cols |= set(t.spec.required_variables)  # type: ignore[attr-defined]
            groups.extend(c for c in t.group_columns if c not in groups)
    RXinv = None
    if se_fit:
        sigma = float(np.sqrt(fit.criterion_sigma2()))
        RXinv = sigma * la.solve_triangular(fit.sol.RX, np.eye(len(fit.sol.beta)))
    return Plan(design, data.kept, fit.sol.beta, _modes(fit), data.layout.offsets,
                selected, tuple(sorted(formula_cols)), tuple(groups), allow_new_levels,
                RXinv)  # fmt: skip


def _modes(fit: LMMFit) -> np.ndarray:
    fit.model.pls.solve(fit.sol.theta)  # the factor must hold this fit's theta
    return fit.model.pls.modes(fit.sol)[1]


# ---- re_form ------------------------------------------------------------------------


def select_columns(design: Design, re_form: str | None) -> tuple[np.ndarray, ...]:
    """Per model term, which of its columns enter the prediction (see module docstring)."""
    if re_form is None:
        return tuple(np.ones(t.p, dtype=bool) for t in design.terms)
    masks = tuple(np.zeros(t.p, dtype=bool) for t in design.terms)
    for wanted in _re_form_terms(re_form):
        _select(design, wanted, masks, re_form)
    return masks


def _re_form_terms(re_form: str) -> tuple[RandomTerm, ...]:
    text = re_form.strip()
    if text in NO_RANDOM:
        return ()
    rhs = text[1:] if text.startswith("~") else text
    try:
        parsed = parse_formula(f"y ~ 0 + {rhs}")
    except FormulaError as exc:
        raise FormulaError(f"re_form '{re_form}': {exc}", "re_form") from None
    if parsed.fixed != "0" or parsed.offsets:
        raise FormulaError(
            f"re_form '{re_form}' must list random-effects terms only, e.g. '~(1 | g)', "
            "or be 'NA' for none", "re_form",
        )  # fmt: skip
    return parsed.random


def _select(design: Design, wanted: RandomTerm, masks: tuple[np.ndarray, ...], text: str) -> None:
    terms = _formula_terms(wanted.lhs, text)
    group = wanted.group.name
    seen: set[str] = set()
    for t, mask in zip(design.terms, masks):
        if t.group != group:
            continue
        for name, cols in _term_columns(t).items():
            if name in terms:
                mask[cols] = True
                seen.add(name)
    if seen != terms:
        have = ", ".join(f"({' + '.join(t.names)} | {t.group})" for t in design.terms)
        raise FormulaError(
            f"re_form term ({wanted.lhs} | {group}) is not among the model's random "
            f"effects: {have}", "re_form",
        )  # fmt: skip


def _formula_terms(lhs: str, text: str) -> set[str]:
    try:
        return {str(t) for t in Formula(_to_python(lhs))}
    except Exception:
        raise FormulaError(f"cannot read '{lhs}' in re_form '{text}'", "re_form") from None


def _term_columns(t: TermDesign) -> dict[str, list[int]]:
    """formulaic term (``1``, ``Days``, ``sex``) -> the term's column indices."""
    indices = t.spec.term_indices  # type: ignore[attr-defined]
    return {str(term): list(cols) for term, cols in indices.items()}


# ---- the new data ----------------------------------------------------------------------


def _check_schema(schema: pa.Schema, plan: Plan) -> None:
    """Every column is there, with the fit's kind (factor or number)."""
    levels = plan.design.info.levels
    for col in plan.columns:
        if col not in schema.names:
            raise DataError(f"newdata has no column '{col}' (the prediction needs it)", col)
        if col not in plan.formula_columns:
            continue
        was_factor = col in levels and is_categorical_type(levels[col].values.type)
        is_factor = is_categorical_type(schema.field(col).type)
        if was_factor != is_factor:
            kinds = ("a factor", "numeric") if was_factor else ("numeric", "a factor")
            raise DataError(
                f"newdata column '{col}' is {kinds[1]} (type {schema.field(col).type}) but "
                f"was {kinds[0]} in the fit", col,
            )  # fmt: skip


def predict_batch(plan: Plan, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
    """fit and se_fit of one batch of new rows (NaN where a row has missing values)."""
    batch = _conform(batch, plan.design.info)
    usable = _complete(batch, plan.formula_columns)
    fit = np.full(batch.num_rows, np.nan)
    se = np.full(batch.num_rows, np.nan)
    if not usable.any():
        return fit, se
    rows = batch.filter(pa.array(usable)) if not usable.all() else batch
    _check_fixed_levels(rows, plan)
    frame = to_pandas(rows.select(list(plan.formula_columns)), plan.design.info)
    if not plan.formula_columns:  # intercepts only: formulaic needs the number of rows
        frame = pd.DataFrame(index=pd.RangeIndex(rows.num_rows))
    rhs = plan.design.fixed_spec.rhs  # type: ignore[attr-defined]
    X = np.asarray(_evaluate(rhs, frame, "formula"), dtype=np.float64)[:, plan.kept]
    eta = X @ plan.beta + _offset(plan.design, frame) + _random_part(plan, rows, frame)
    fit[usable] = eta
    if plan.RXinv_sigma is not None:
        se[usable] = np.sqrt(np.sum((X @ plan.RXinv_sigma) ** 2, axis=1))
    bad = ~np.isfinite(fit)
    se[bad] = np.nan
    return fit, se


def _conform(batch: pa.RecordBatch, info: FrameInfo) -> pa.RecordBatch:
    """Factor columns decoded and cast to the type of the fit's levels (for lookups)."""
    cols = []
    for name, col in zip(batch.schema.names, batch.columns):
        lev = info.levels.get(name)
        if lev is not None:
            col = _cast(col, lev, name)
        cols.append(col)
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names)


def _cast(col: pa.Array, lev: Levels, name: str) -> pa.Array:
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if col.type == lev.values.type:
        return col
    try:
        return col.cast(lev.values.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(
            f"newdata column '{name}' (type {col.type}) cannot be read as the fit's "
            f"levels (type {lev.values.type})", name,
        ) from None  # fmt: skip


def _complete(batch: pa.RecordBatch, columns: tuple[str, ...]) -> np.ndarray:
    keep = np.ones(batch.num_rows, dtype=bool)
    for c in columns:
        keep &= ~_missing(batch.column(c))
    return keep


def _lookup(lev: Levels, col: pa.Array) -> np.ndarray:
    """Level index of each entry, -1 for a value the fit did not see or a missing one."""
    idx = pc.index_in(col, value_set=lev.values)
    return np.asarray(idx.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


def _check_fixed_levels(rows: pa.RecordBatch, plan: Plan) -> None:
    levels = plan.design.info.levels
    for c in plan.formula_columns:
        lev = levels.get(c)
        if lev is None or not is_categorical_type(lev.values.type):
            continue
        codes = _lookup(lev, rows.column(c))
        if (codes < 0).any():
            value = rows.column(c)[int(np.argmax(codes < 0))].as_py()
            raise DataError(
                f"newdata column '{c}' has level '{value}' that the fit did not see, so its "
                "fixed effect is unknown", c,
            )  # fmt: skip


def _offset(design: Design, frame) -> np.ndarray | float:
    if not design.offset_specs:
        return 0.0
    parts = [np.asarray(_evaluate(s, frame, "offset"), float)[:, 0] for s in design.offset_specs]
    return np.sum(parts, axis=0)


# ---- random effects ------------------------------------------------------------------


def _random_part(plan: Plan, rows: pa.RecordBatch, frame) -> np.ndarray:
    total = np.zeros(rows.num_rows)
    for k, (t, mask) in enumerate(zip(plan.design.terms, plan.selected)):
        if not mask.any():
            continue
        codes = _group_codes(rows, t, plan.design.info)
        _check_new_levels(rows, t, codes, plan.allow_new_levels)
        values = np.asarray(_evaluate(t.spec, frame, t.group), float)
        B = plan.b[plan.offsets[k] : plan.offsets[k] + t.p * t.nlevels].reshape(t.nlevels, t.p)
        known = codes >= 0
        contrib = np.sum(values[known][:, mask] * B[codes[known]][:, mask], axis=1)
        total[known] += contrib
    return total


def _group_codes(rows: pa.RecordBatch, t: TermDesign, info: FrameInfo) -> np.ndarray:
    """Level of each row in the fit's grouping factor, -1 for new or missing."""
    comps = [_lookup(info.levels[c], rows.column(c)) for c in t.group_columns]
    if len(comps) == 1:
        return comps[0]
    inter = info.groups[t.group]
    absent = np.any([c < 0 for c in comps], axis=0)
    key = _mixed_key([np.where(c < 0, 0, c) for c in comps], inter.components)
    pos = np.minimum(np.searchsorted(inter.keys, key), len(inter.keys) - 1)
    found = (inter.keys[pos] == key) & ~absent
    return np.where(found, pos, -1)


def _check_new_levels(rows: pa.RecordBatch, t: TermDesign, codes: np.ndarray, allow: bool) -> None:
    if allow or (codes >= 0).all():
        return
    i = int(np.argmax(codes < 0))
    value = ":".join(str(rows.column(c)[i].as_py()) for c in t.group_columns)
    raise DataError(
        f"newdata has level '{value}' of grouping factor '{t.group}' that the fit did not "
        "see (or a missing value); allow new levels to predict it at the population level",
        t.group,
    )


def _nullable(parts: list[np.ndarray]) -> pa.Array:
    values = np.concatenate(parts) if parts else np.zeros(0)
    return pa.array(values, type=pa.float64(), mask=~np.isfinite(values))
