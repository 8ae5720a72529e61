"""From (formula, source) to the cross-products of one model: lme4's ``lFormula``.

    parse formula -> check columns -> pass 1 (missing values, levels)
    -> order terms by decreasing number of levels (as lme4) -> specs of X, y, Z
    -> pass 2 (cross-products) -> lme4's identifiability checks and rank of X

The result, ``ModelData``, is immutable and holds no rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
from formulaic import Formula

from .crossprod import CrossProducts, TermLayout, accumulate
from .design import Design, ModelRows, build_design, is_categorical_type
from .errors import DataError, FormulaError
from .formula import ModelFormula, RandomTerm, _to_python, parse_formula
from .frame import FrameInfo, clean, scan
from .sources import DEFAULT_BATCH_ROWS, Source, open_source

RowsProgress = Callable[[str, int], None]


@dataclass(frozen=True)
class ModelData:
    """Everything the fit needs: the formula, the design specs and the cross-products."""

    formula: ModelFormula
    source: Source
    columns: tuple[str, ...]
    design: Design
    layout: TermLayout
    cp: CrossProducts
    kept: np.ndarray  # columns of X kept after the rank check
    messages: tuple[str, ...]
    buffer: ModelRows | None = None  # all model rows, kept for GLMMs (PIRLS passes)

    @property
    def fixed_names(self) -> tuple[str, ...]:
        return tuple(self.design.fixed_names[i] for i in self.kept)

    def rows(self, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[ModelRows]:
        """The model rows again (for fitted values and residuals)."""
        yield from model_rows(self.source, self.columns, self.design, batch_rows)


def model_rows(
    source: Source, columns: tuple[str, ...], design: Design, batch_rows: int,
    progress: RowsProgress | None = None,
) -> Iterator[ModelRows]:  # fmt: skip
    done = 0
    for raw in source.batches(columns, batch_rows):
        done += raw.num_rows
        if progress is not None:
            progress("cross-products", done)
        batch = clean(raw)
        if batch.num_rows:
            yield design.rows(batch)


def prepare(
    formula: str,
    data: str | pa.Table | Source,
    weights: str | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: RowsProgress | None = None,
    family: str = "gaussian",
) -> ModelData:
    """Parse, read and reduce the data to cross-products."""
    parsed = parse_formula(formula)
    source = open_source(data)
    schema = source.schema()
    columns, factors = _columns(parsed, schema, weights, family)
    interactions = sorted({t.group.columns for t in parsed.random if len(t.group.columns) > 1})
    info, sample = scan(source.batches(columns, batch_rows), factors, list(interactions))
    terms = _ordered_terms(parsed.random, info)
    design = build_design(parsed, terms, weights, info, sample)
    layout = _layout(design)
    _check_levels(design, info)
    rows: Iterator[ModelRows] = (
        _checked_weights(r, weights, family)
        for r in model_rows(source, columns, design, batch_rows, progress)
    )
    kept_rows: list[ModelRows] | None = [] if family != "gaussian" else None
    if kept_rows is not None:
        rows = _keeping(rows, kept_rows)
    cp = accumulate(rows, layout)
    _check_identifiable(design, layout, cp)
    _check_variation(design, parsed, cp)
    cp, kept, rank_msgs = _drop_aliased(cp, design.fixed_names)
    messages = tuple(m for m in [info.dropped_message(), *rank_msgs] if m)
    buffer = concat_rows(kept_rows) if kept_rows is not None else None
    return ModelData(parsed, source, columns, design, layout, cp, kept, messages, buffer)


def _keeping(rows: Iterator[ModelRows], store: list[ModelRows]) -> Iterator[ModelRows]:
    for r in rows:
        store.append(r)
        yield r


def concat_rows(parts: list[ModelRows]) -> ModelRows:
    """One columnar buffer of all model rows."""

    def cat(xs):
        return None if xs[0] is None else np.concatenate(xs)

    return ModelRows(
        X=np.concatenate([r.X for r in parts]),
        y=np.concatenate([r.y for r in parts]),
        w=cat([r.w for r in parts]),
        offset=cat([r.offset for r in parts]),
        codes=tuple(np.concatenate(c) for c in zip(*(r.codes for r in parts))),
        values=tuple(np.concatenate(v) for v in zip(*(r.values for r in parts))),
    )


def _columns(
    f: ModelFormula, schema: pa.Schema, weights: str | None, family: str = "gaussian"
) -> tuple[tuple[str, ...], list[str]]:
    """Columns the model reads, and which of them are factors."""
    fixed_vars = _variables(f.fixed_formula(), "formula")
    lhs_vars = {v for t in f.random for v in _variables(_to_python(t.lhs), f"({t.lhs} | ...)")}
    offset_vars = {v for o in f.offsets for v in _variables(f"I({_to_python(o)})", "offset")}
    group_cols = {c for t in f.random for c in t.group.columns}
    wanted = fixed_vars | lhs_vars | offset_vars | group_cols | ({weights} if weights else set())
    names = set(schema.names)
    for col in sorted(wanted):
        if col not in names and col in _R_ONLY:
            raise FormulaError(f"{col}() is not supported in formulas: {_R_ONLY[col]}", col)
        if col not in names:
            raise FormulaError(f"unknown column '{col}' (not in the data)", col)
    _check_response(f.response, schema, family)
    if weights and is_categorical_type(schema.field(weights).type):
        raise DataError(f"weights column '{weights}' is not numeric", weights)
    typed = fixed_vars | lhs_vars | ({f.response} if f.response in names else set())
    factors = sorted(group_cols | {c for c in typed if is_categorical_type(schema.field(c).type)})
    return tuple(sorted(wanted)), factors


_R_ONLY = {
    "factor": "string, boolean and dictionary columns are factors already; cast the "
    "column (e.g. in an sql: source, CAST(x AS VARCHAR)) to use a number as a factor",
    "as.factor": "cast the column to a string type in the data instead",
    "ordered": "polynomial contrasts are not supported; use a string column",
}


def _variables(formula_text: str, where: str) -> set[str]:
    try:
        return {str(v) for v in Formula(formula_text).required_variables}
    except Exception as exc:  # formulaic raises several types for bad syntax
        from .design import _clean

        raise FormulaError(f"cannot parse {where} '{formula_text}': {_clean(exc)}", where) from None


def _check_response(response: str, schema: pa.Schema, family: str) -> None:
    if family == "binomial":
        return  # a two-level factor is allowed; checked with its levels
    if response in schema.names and is_categorical_type(schema.field(response).type):
        raise DataError(
            f"response '{response}' is not numeric (type {schema.field(response).type})",
            response,
        )


def _ordered_terms(random: tuple[RandomTerm, ...], info: FrameInfo):
    """(group name, columns, lhs) in lme4's order: decreasing number of levels, stable."""

    def nlevels(t: RandomTerm) -> int:
        cols = t.group.columns
        return len(
            info.levels[cols[0]].labels if len(cols) == 1 else info.groups[t.group.name].labels
        )

    ordered = sorted(random, key=lambda t: -nlevels(t))
    return [(t.group.name, t.group.columns, t.lhs) for t in ordered]


def _layout(design: Design) -> TermLayout:
    sizes = [t.p * t.nlevels for t in design.terms]
    offsets = tuple(int(x) for x in np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    return TermLayout(offsets, tuple(t.p for t in design.terms),
                      tuple(t.nlevels for t in design.terms))  # fmt: skip


def _check_levels(design: Design, info: FrameInfo) -> None:
    for t in design.terms:
        if t.nlevels < 2:
            raise DataError(
                f"grouping factor '{t.group}' has only {t.nlevels} level; "
                "a random effect needs at least 2", t.group,
            )  # fmt: skip


def _checked_weights(rows: ModelRows, weights: str | None, family: str) -> ModelRows:
    """Prior weights: positive for LMMs (log w enters the likelihood), >= 0 for GLMMs."""
    if rows.w is None:
        return rows
    ok = rows.w > 0 if family == "gaussian" else rows.w >= 0
    if not np.all(ok):
        bound = "<= 0" if family == "gaussian" else "< 0"
        raise DataError(f"weights column '{weights}' has values {bound}", weights or "weights")
    return rows


def _check_identifiable(design: Design, layout: TermLayout, cp: CrossProducts) -> None:
    """lme4's checks: levels < observations, random effects < observations."""
    n = cp.n
    for t, counts in zip(design.terms, cp.level_counts):
        used = int(np.count_nonzero(counts))
        if used >= n:
            raise DataError(
                f"grouping factor '{t.group}' has {used} levels for {n} observations: "
                "the number of levels must be less than the number of observations", t.group,
            )  # fmt: skip
        if t.p * used >= n:
            raise DataError(
                f"number of observations ({n}) <= number of random effects ({t.p * used}) "
                f"for term ({' + '.join(t.names)} | {t.group}); the random-effects "
                "parameters and the residual variance are probably unidentifiable", t.group,
            )  # fmt: skip


def _check_variation(design: Design, f: ModelFormula, cp: CrossProducts) -> None:
    """A main-effect column or the response that is the same in every row is an error."""
    const = cp.x_min == cp.x_max
    if const[-1]:
        raise DataError(f"response '{f.response}' has no variation (every row is "
                        f"{cp.x_min[-1]:g})", f.response)  # fmt: skip
    for name, c, lo in zip(design.fixed_names, const[:-1], cp.x_min[:-1]):
        if c and name != "(Intercept)" and ":" not in name:
            raise DataError(f"term '{name}' has no variation (every row is {lo:g})", name)


def _drop_aliased(
    cp: CrossProducts, names: tuple[str, ...], tol: float = 1e-7
) -> tuple[CrossProducts, np.ndarray, list[str]]:
    """Drop columns of X that are (numerically) combinations of earlier ones.

    As R's ``qr(X, tol = 1e-7)`` via X'WX: column j is aliased when the norm of
    its part orthogonal to the kept columns is below tol times its own norm.
    """
    XtX = cp.XtX
    kept: list[int] = []
    for j in range(XtX.shape[0]):
        trial = kept + [j]
        sub = XtX[np.ix_(trial, trial)]
        resid = _schur_last(sub)
        if XtX[j, j] > 0 and resid > (tol**2) * XtX[j, j]:
            kept.append(j)
    dropped = [names[j] for j in range(XtX.shape[0]) if j not in kept]
    idx = np.array(kept, dtype=int)
    if not dropped:
        return cp, idx, []
    msg = (f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} "
           f"column / coefficient ({', '.join(dropped)})")  # fmt: skip
    cp = replace(cp, XtX=XtX[np.ix_(idx, idx)], ZtX=cp.ZtX[:, idx], XtY=cp.XtY[idx])
    return cp, idx, [msg]


def _schur_last(sub: np.ndarray) -> float:
    """Squared norm of the last column's part orthogonal to the others."""
    if sub.shape[0] == 1:
        return float(sub[0, 0])
    A, b, c = sub[:-1, :-1], sub[:-1, -1], sub[-1, -1]
    return float(c - b @ np.linalg.solve(A, b))
