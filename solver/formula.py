"""The lme4 formula language, split into its fixed and random parts.

    response ~ fixed + offset(e) + (lhs_1 | g_1) + (lhs_2 || g_2) + ...

A random-effects term ``(lhs | g)`` contributes a block ``Z_k`` of ``p_k * l_k``
columns, ``p_k`` = columns of the model matrix of ``~ lhs`` (intercept implicit, as
in R), ``l_k`` = levels of ``g``.  Grouping expressions follow lme4:

    g = a        one factor
    g = a:b      the interaction factor, levels "a_level:b_level"
    g = a/b      nesting, expands to a and b:a
    (x || g)     uncorrelated: (1 | g) + (0 + x | g), one scalar term per column

The fixed part (with ``^`` read as R's power) is handed to formulaic, which
implements R's term expansion and treatment contrasts; offsets are split off here
because they enter ``y`` and not ``X``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from formulaic import Formula

from .errors import FormulaError

_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")


@dataclass(frozen=True)
class GroupingFactor:
    """A grouping factor: one column, or the interaction of several (``a:b``)."""

    columns: tuple[str, ...]

    @property
    def name(self) -> str:
        return ":".join(self.columns)


@dataclass(frozen=True)
class RandomTerm:
    """One ``(lhs | g)`` term after ``||`` and ``/`` expansion."""

    lhs: str
    group: GroupingFactor


@dataclass(frozen=True)
class ModelFormula:
    """A parsed lme4 formula."""

    text: str
    response: str
    fixed: str
    offsets: tuple[str, ...]
    random: tuple[RandomTerm, ...]
    trials: str | None = None  # cbind(s, f): the response is s / (s + f), trials s + f

    def fixed_formula(self) -> str:
        """The fixed part as a formulaic formula (R's ``^`` becomes ``**``)."""
        return f"{_to_python(self.response)} ~ {_to_python(self.fixed)}"


def _to_python(expr: str) -> str:
    return expr.replace("^", "**")


def parse_formula(text: str) -> ModelFormula:
    """Parse ``text``; raise FormulaError naming the place at fault."""
    _check_parentheses(text)
    parts = _split_top(text, "~")
    if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
        raise FormulaError(f"formula '{text}' must have the form 'response ~ terms'", "formula")
    response, rhs = parts[0].strip(), parts[1]
    _reject_stateful(text)
    fixed: list[str] = []
    offsets: list[str] = []
    random: list[RandomTerm] = []
    for sign, term in _signed_terms(rhs):
        inner = _bar_content(term)
        if inner is not None and sign == "+":
            random.extend(_expand_bar(inner, term))
        elif term.startswith("offset(") and term.endswith(")") and sign == "+":
            offsets.append(term[len("offset(") : -1].strip())
        else:
            fixed.append(f"{sign} {term}" if fixed or sign == "-" else term)
    if not random:
        raise FormulaError(
            "no random-effects terms: add at least one '(expr | group)' term", "formula"
        )
    fixed_text = " ".join(fixed) if fixed else "1"
    if fixed_text.startswith("-"):
        fixed_text = "1 " + fixed_text
    response, trials = _cbind(response)
    return ModelFormula(text, response, fixed_text, tuple(offsets), tuple(random), trials)


def _cbind(response: str) -> tuple[str, str | None]:
    """``cbind(s, f)`` -> (the proportion s / (s + f), the number of trials s + f)."""
    if not (response.startswith("cbind(") and response.endswith(")")):
        return response, None
    parts = [p.strip() for p in _split_top(response[len("cbind(") : -1], ",")]
    if len(parts) != 2 or not all(parts):
        raise FormulaError(f"'{response}' must be cbind(successes, failures)", "formula")
    s, f = parts
    return f"I(({s}) / (({s}) + ({f})))", f"({s}) + ({f})"


_STATEFUL = re.compile(r"\b(scale|center|standardize|poly|bs|ns|cs|cr|cc|te|hashed|lag|C)\s*\(")


def _reject_stateful(text: str) -> None:
    """Transforms that need statistics of a whole column cannot run batch by batch."""
    m = _STATEFUL.search(text)
    if m:
        raise FormulaError(
            f"'{m.group(1)}()' needs statistics of the whole column, but formulas are "
            "evaluated batch by batch: transform the column in the data (or an sql: "
            "source) first",
            m.group(1),
        )


def _signed_terms(rhs: str) -> list[tuple[str, str]]:
    """Top-level terms with their sign: 'x + (1|g) - 1' -> [+x, +(1|g), -1]."""
    out: list[tuple[str, str]] = []
    depth, start, sign = 0, 0, "+"
    for pos, ch in enumerate(rhs + "+"):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch in "+-" and depth == 0:
            term = rhs[start:pos].strip()
            if term:
                out.append((sign, term))
            elif pos > 0 and not (ch == "-" and not out and not rhs[:pos].strip()):
                raise FormulaError(f"empty term in '{rhs.strip()}' (a stray '{ch}'?)", "formula")
            sign, start = ch, pos + 1
    return out


def _check_parentheses(text: str) -> None:
    depth = 0
    for pos, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            raise FormulaError(f"unmatched ')' at position {pos + 1} of '{text}'", "formula")
    if depth:
        raise FormulaError(f"unclosed '(' in '{text}'", "formula")


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside parentheses."""
    out, depth, start = [], 0, 0
    for pos, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == sep and depth == 0:
            out.append(text[start:pos])
            start = pos + 1
    out.append(text[start:])
    return out


def _bar_content(term: str) -> str | None:
    """The inside of ``( ... | ... )`` if ``term`` is one parenthesised bar term."""
    if not (term.startswith("(") and term.endswith(")")):
        return None
    inner = term[1:-1]
    if _closing(term) != len(term) - 1 or "|" not in _split_top_text(inner):
        return None
    return inner


def _closing(text: str) -> int:
    """Index of the parenthesis closing the one at ``text[0]``."""
    depth = 0
    for pos, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return pos
    return -1


def _split_top_text(text: str) -> str:
    """``text`` with every parenthesised part blanked, to look for top-level bars."""
    depth, out = 0, []
    for ch in text:
        depth += ch == "("
        out.append(ch if depth == 0 else " ")
        depth -= ch == ")"
    return "".join(out)


def _expand_bar(inner: str, term: str) -> list[RandomTerm]:
    flat = _split_top_text(inner)
    double = "||" in flat
    pos = flat.index("||") if double else flat.index("|")
    lhs = inner[:pos].strip()
    group_text = inner[pos + (2 if double else 1) :].strip()
    if not lhs or not group_text:
        raise FormulaError(f"random-effects term '{term}' needs 'expr | group'", term)
    groups = _expand_groups(group_text, term)
    if not double:
        return [RandomTerm(lhs, g) for g in groups]
    return [RandomTerm(part, g) for g in groups for part in _uncorrelated_parts(lhs, term)]


def _expand_groups(text: str, term: str) -> list[GroupingFactor]:
    """``a/b/c`` -> a, b:a, c:b:a (lme4 names nested factors inner-first)."""
    nest = [p.strip() for p in text.split("/")]
    out: list[GroupingFactor] = []
    outer: list[str] = []
    for part in nest:
        columns = tuple(c.strip() for c in part.split(":"))
        for col in columns:
            if not _NAME.match(col):
                raise FormulaError(
                    f"grouping factor '{col}' in '{term}' must be a column name", term
                )
        outer = list(columns) + outer
        out.append(GroupingFactor(tuple(outer)))
    return out


def _uncorrelated_parts(lhs: str, term: str) -> list[str]:
    """``1 + x + z`` -> ['1', '0 + x', '0 + z'] as lme4's ``||`` expansion (terms as
    formulaic expands them, so ``x * z`` gives x, z and x:z, and ``x - 1`` no intercept)."""
    try:
        terms = [str(t) for t in Formula(_to_python(lhs))]
    except Exception:
        raise FormulaError(f"cannot read '{lhs}' in random-effects term '{term}'", term) from None
    intercept = "1" in terms
    parts = (["1"] if intercept else []) + [f"0 + {t}" for t in terms if t != "1"]
    if not parts:
        raise FormulaError(f"random-effects term '{term}' has no columns", term)
    return parts
