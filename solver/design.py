"""Model rows: one clean Arrow batch -> (X, y, w, offset, and per term (codes, values)).

For rows i of a batch:

    X[i, :]            fixed-effects model matrix (formulaic, R's treatment contrasts)
    y[i]               response minus the offsets
    w[i]               prior weight (1 when no weights)
    codes_k[i]         level of grouping factor k, in 0 .. l_k - 1
    values_k[i, :]     the p_k columns of ~ lhs_k, so that row i of Z has
                       Z[i, off_k + codes_k[i] * p_k + j] = values_k[i, j]

The column specs are fixed once from the levels of pass 1, so every batch gives
the same columns.  Names are translated to R's (``(Intercept)``, ``sexM``,
``x:fb``, ``I(age^2)``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from formulaic import model_matrix
from formulaic.errors import FormulaicError

from .errors import DataError, FormulaError
from .formula import ModelFormula, _to_python
from .frame import FrameInfo

FUNCTIONS = {
    "log": np.log, "exp": np.exp, "sqrt": np.sqrt, "abs": np.abs,
    "log10": np.log10, "log2": np.log2, "log1p": np.log1p,
}  # fmt: skip
_ANSI = re.compile(r"\x1b\[[0-9;]*m|[⧛⧚]")


@dataclass(frozen=True)
class TermDesign:
    """One random-effects term ``(lhs | group)``: its columns and its grouping factor."""

    group: str
    group_columns: tuple[str, ...]
    names: tuple[str, ...]
    labels: tuple[str, ...]
    spec: object

    @property
    def p(self) -> int:
        return len(self.names)

    @property
    def nlevels(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class ModelRows:
    """The model's view of one batch of rows."""

    X: np.ndarray
    y: np.ndarray
    w: np.ndarray | None
    offset: np.ndarray | None
    codes: tuple[np.ndarray, ...]
    values: tuple[np.ndarray, ...]

    @property
    def n(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Design:
    """Column specs for X, y, offsets and the random-effects terms (order as lme4)."""

    fixed_names: tuple[str, ...]
    fixed_spec: object
    offset_specs: tuple[object, ...]
    terms: tuple[TermDesign, ...]
    weights: str | None
    info: FrameInfo
    trials_spec: object | None = None
    response: str = "response"

    def rows(self, batch: pa.RecordBatch) -> ModelRows:
        """Model rows of one clean batch (no missing values)."""
        frame = to_pandas(batch.select(list(self.frame_columns)), self.info)
        mats = _evaluate(self.fixed_spec, frame, "formula")
        X = np.asarray(mats.rhs, dtype=np.float64)
        y = np.asarray(mats.lhs, dtype=np.float64)[:, -1]  # a two-level factor: 2nd level
        offset = self._offset(frame)
        if offset is not None:
            y = y - offset
        w = None
        if self.weights is not None:
            w = np.asarray(frame[self.weights], dtype=np.float64)
        if self.trials_spec is not None:
            trials = np.asarray(_evaluate(self.trials_spec, frame, "cbind"), float)[:, 0]
            _check_finite(trials[:, None], (f"the trials of {self.response}",))
            if np.any(trials < 0):
                raise DataError(f"{self.response} has a negative number of trials", "response")
            y = np.where(trials == 0, 0.0, y)  # no trials: weight 0, as R's binomial()
            w = trials if w is None else w * trials
        _check_finite(X, self.fixed_names)
        _check_finite(y[:, None], (self.response,))
        codes = tuple(self._codes(batch, t) for t in self.terms)
        values = tuple(self._values(frame, t) for t in self.terms)
        return ModelRows(X, y, w, offset, codes, values)

    @functools.cached_property
    def frame_columns(self) -> tuple[str, ...]:
        """The columns the formulas read (the response among them): a grouping factor
        only gives codes, which need no pandas frame."""
        specs = [self.fixed_spec, *self.offset_specs, *(t.spec for t in self.terms)]
        if self.trials_spec is not None:
            specs.append(self.trials_spec)
        names = set().union(*(s.required_variables for s in specs))  # type: ignore[attr-defined]
        return tuple(sorted(names | ({self.weights} if self.weights else set())))

    def _offset(self, frame: pd.DataFrame) -> np.ndarray | None:
        if not self.offset_specs:
            return None
        parts = [np.asarray(_evaluate(s, frame, "offset"))[:, 0] for s in self.offset_specs]
        total = np.sum(parts, axis=0).astype(np.float64)
        _check_finite(total[:, None], ("offset",))
        return total

    def _codes(self, batch: pa.RecordBatch, term: TermDesign) -> np.ndarray:
        comps = [self.info.levels[c].codes(batch.column(c)) for c in term.group_columns]
        if len(comps) == 1:
            return comps[0]
        return self.info.groups[term.group].codes_from(comps)

    def _values(self, frame: pd.DataFrame, term: TermDesign) -> np.ndarray:
        if term.names == ("(Intercept)",):  # (1 | g): no formula to evaluate
            return np.ones((len(frame), 1))
        vals = np.asarray(_evaluate(term.spec, frame, term.group), dtype=np.float64)
        _check_finite(vals, term.names)
        return vals


def to_pandas(batch: pa.RecordBatch, info: FrameInfo) -> pd.DataFrame:
    """Columns as formulaic needs them: factors as Categoricals with all levels."""
    data = {}
    for name, col in zip(batch.schema.names, batch.columns):
        lev = info.levels.get(name)
        if lev is not None and is_categorical_type(col.type):
            data[name] = pd.Categorical.from_codes(lev.codes(col), categories=list(lev.labels))
        else:
            data[name] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    return pd.DataFrame(data)


def is_categorical_type(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(t) or pa.types.is_large_string(t)
        or pa.types.is_dictionary(t) or pa.types.is_boolean(t)
    )  # fmt: skip


def _evaluate(spec: object, frame: pd.DataFrame, where: str):
    try:
        return spec.get_model_matrix(frame)  # type: ignore[attr-defined]
    except (FormulaicError, ValueError, TypeError, KeyError) as exc:
        raise FormulaError(f"cannot evaluate {where}: {_clean(exc)}", where) from None


def _clean(exc: BaseException) -> str:
    return " ".join(_ANSI.sub("", str(exc)).split())


def _check_finite(mat: np.ndarray, names: tuple[str, ...]) -> None:
    bad = ~np.isfinite(mat)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"'{names[col]}' is not finite ({mat[row, col]}) in a row of the data", names[col]
        )


def build_spec(formula_text: str, frame: pd.DataFrame, where: str):
    """A reusable formulaic spec for ``formula_text``, built on one batch."""
    try:
        mm = model_matrix(
            formula_text, frame, context=FUNCTIONS, output="numpy", na_action="ignore"
        )
    except (FormulaicError, ValueError, TypeError, KeyError, SyntaxError) as exc:
        raise FormulaError(f"cannot read {where} '{formula_text}': {_clean(exc)}", where) from None
    return mm.model_spec


def r_names(columns: tuple[str, ...], formula_text: str) -> tuple[str, ...]:
    """formulaic column names -> R's (``f[T.b]`` -> ``fb``, variables in formula order)."""
    return tuple(_r_name(c, formula_text) for c in columns)


def _r_name(column: str, formula_text: str) -> str:
    if column == "Intercept":
        return "(Intercept)"
    parts = [_r_part(p) for p in _split_colon(column)]
    parts.sort(key=lambda pair: _first_position(pair[0], formula_text))
    return ":".join(label for _, label in parts)


def _r_part(part: str) -> tuple[str, str]:
    """(variable expression, R label) of one factor of a column name."""
    m = re.match(r"^(.*)\[(?:T\.)?(.*)\]$", part)
    if m:
        var, level = m.group(1), m.group(2)
        level = {"True": "TRUE", "False": "FALSE"}.get(level, level)
        return var, var + level
    return part, part.replace(" ** ", "^")


def _split_colon(name: str) -> list[str]:
    out, depth, start = [], 0, 0
    for pos, ch in enumerate(name):
        depth += ch in "([" and 1 or (ch in ")]" and -1 or 0)
        if ch == ":" and depth == 0:
            out.append(name[start:pos])
            start = pos + 1
    out.append(name[start:])
    return out


def _first_position(expr: str, text: str) -> int:
    for candidate in (expr, expr.replace(" ** ", "**"), expr.replace(" ** ", "^")):
        pos = text.find(candidate)
        if pos >= 0:
            return pos
    return len(text)


def build_design(
    formula: ModelFormula,
    terms: list[tuple[str, tuple[str, ...], str]],
    weights: str | None,
    info: FrameInfo,
    first: pa.RecordBatch,
) -> Design:
    """Specs from the first clean batch; ``terms`` = (group name, columns, lhs)."""
    frame = to_pandas(first, info)
    fixed_text = formula.fixed_formula()
    fixed_spec = build_spec(fixed_text, frame, "formula")
    fixed_names = r_names(tuple(fixed_spec.rhs.column_names), _to_python(formula.fixed))
    offsets = tuple(build_spec(f"0 + I({_to_python(o)})", frame, "offset") for o in formula.offsets)
    term_designs = tuple(_term_design(g, cols, lhs, frame, info) for g, cols, lhs in terms)
    trials = None
    if formula.trials is not None:
        trials = build_spec(f"0 + I({_to_python(formula.trials)})", frame, "cbind")
    _check_lhs(fixed_spec, formula.response)
    response = formula.text.split("~")[0].strip()
    return Design(fixed_names, fixed_spec, offsets, term_designs, weights, info, trials, response)


def _check_lhs(spec, response: str) -> None:
    names = spec.lhs.column_names
    if len(names) > 2:
        raise DataError(
            f"response '{response}' is a factor with {len(names)} levels; a binomial "
            "response needs two (the first is failure)", response,
        )  # fmt: skip


def _term_design(
    group: str, cols: tuple[str, ...], lhs: str, frame: pd.DataFrame, info: FrameInfo
) -> TermDesign:
    spec = build_spec(_to_python(lhs), frame, f"({lhs} | {group})")
    names = r_names(tuple(spec.column_names), _to_python(lhs))
    if not names:
        raise FormulaError(f"random-effects term ({lhs} | {group}) has no columns", group)
    labels = info.levels[cols[0]].labels if len(cols) == 1 else info.groups[group].labels
    return TermDesign(group, cols, names, labels, spec)
