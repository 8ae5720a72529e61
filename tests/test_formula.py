"""The lme4 formula language: parsing of bars, nesting, ``||`` and offsets."""

from __future__ import annotations

import pytest

from sparsemm.solver.errors import FormulaError
from sparsemm.solver.formula import parse_formula


def groups(text: str) -> list[tuple[str, str]]:
    return [(t.lhs, t.group.name) for t in parse_formula(text).random]


def test_simple_and_crossed_terms() -> None:
    f = parse_formula("y ~ x1 * f + (1 | g) + (1 + x | h)")
    assert f.response == "y"
    assert f.fixed == "x1 * f"
    assert groups(f.text) == [("1", "g"), ("1 + x", "h")]


def test_nested_grouping_expands_as_lme4() -> None:
    assert groups("strength ~ 1 + (1 | batch/cask)") == [("1", "batch"), ("1", "cask:batch")]
    assert groups("y ~ (1 | a/b/c)") == [("1", "a"), ("1", "b:a"), ("1", "c:b:a")]


def test_interaction_grouping_factor() -> None:
    term = parse_formula("y ~ service + (1 | dept:service)").random[0]
    assert term.group.columns == ("dept", "service")
    assert term.group.name == "dept:service"


def test_double_bar_splits_into_scalar_terms() -> None:
    assert groups("y ~ x + (x || g)") == [("1", "g"), ("0 + x", "g")]
    assert groups("y ~ x + (0 + x + z || g)") == [("0 + x", "g"), ("0 + z", "g")]


def test_offsets_and_empty_fixed_part() -> None:
    f = parse_formula("y ~ offset(log(t)) + (1 | g)")
    assert f.offsets == ("log(t)",)
    assert f.fixed == "1"
    assert f.fixed_formula() == "y ~ 1"


def test_power_is_translated_for_python() -> None:
    f = parse_formula("y ~ x + I(x^2) + (1 | g)")
    assert f.fixed_formula() == "y ~ x + I(x**2)"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("y ~ x + (1 | g", "unclosed '('"),
        ("y ~ x) + (1 | g)", "unmatched ')' at position 6"),
        ("y x + (1 | g)", "must have the form"),
        ("y ~ x", "no random-effects terms"),
        ("y ~ x + (1 | )", "needs 'expr | group'"),
        ("y ~ x + (1 | log(g))", "must be a column name"),
        ("y ~ x + + (1 | g)", "empty term"),
    ],
)
def test_errors_say_where(text: str, fragment: str) -> None:
    with pytest.raises(FormulaError, match=None) as err:
        parse_formula(text)
    assert fragment in str(err.value)
