"""The calculate_output formula language: values worked out by hand, error positions, and
adversarial input that must fail with a FormulaError (never eval, never a RecursionError)."""

from __future__ import annotations

import inspect
import math
import re
import time

import pytest

from openrft.rewards import formula
from openrft.rewards.formula import MAX_DEPTH, MAX_LENGTH, FormulaError, parse, point_at

VALUES = {"a": 1.0, "b": 0.5, "c": 4.0, "zero": 0.0}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2 * 3", 7.0),  # * before +: 1 + 6
        ("(1 + 2) * 3", 9.0),  # parentheses first: 3 * 3
        ("10 / 4 * 2", 5.0),  # left to right: (10 / 4) * 2 = 2.5 * 2
        ("8 / 4 / 2", 1.0),  # left-associative: (8 / 4) / 2, not 8 / (4 / 2) = 4
        ("8 - 4 - 2", 2.0),  # left-associative: (8 - 4) - 2, not 8 - (4 - 2) = 6
        ("2 ^ 3 ^ 2", 512.0),  # right-associative: 2 ^ (3 ^ 2) = 2 ^ 9, not 8 ^ 2 = 64
        ("2 ** 3 ** 2", 512.0),  # ** is a synonym of ^
        ("(2 ^ 3) ^ 2", 64.0),
        ("2 * 3 ^ 2", 18.0),  # ^ before *: 2 * 9
        ("-2 ^ 2", -4.0),  # ^ before unary minus: -(2 ^ 2), as in Python
        ("(-2) ^ 2", 4.0),
        ("2 ^ -1", 0.5),  # a signed exponent needs no parentheses
        ("2 ^ -1 ^ 2", 0.5),  # 2 ^ (-(1 ^ 2)) = 2 ^ -1
        ("-3 - -3", 0.0),
        ("+-+3", -3.0),
        ("2 * -a", -2.0),
        ("1e2 + .5 + 2. + 1.5E-1", 102.65),  # 100 + 0.5 + 2 + 0.15
        ("min(3, 1, 2)", 1.0),
        ("max(a, b) - min(a, b)", 0.5),  # 1 - 0.5
        ("min(a)", 1.0),
        ("abs(-2.5)", 2.5),
        ("floor(-1.5)", -2.0),
        ("ceil(1.2)", 2.0),
        ("exp(0)", 1.0),
        ("sqrt(c)", 2.0),
        ("log(exp(2))", 2.0),
        ("0.7 * a + 0.3 * b", 0.85),  # 0.7 + 0.15
        ("(a + b + c) / 3", 5.5 / 3),
        ("a*b+c", 4.5),  # whitespace is optional
        ("\ta *\n b ", 0.5),  # any ASCII whitespace separates tokens
        ("42", 42.0),
    ],
)
def test_values(text: str, expected: float) -> None:
    assert parse(text).evaluate(VALUES) == pytest.approx(expected, abs=1e-12)


def test_names_in_order_of_first_appearance() -> None:
    expression = parse("0.7 * b + 0.3 * a + min(b, c_2)")
    assert expression.names == ("b", "a", "c_2")
    assert parse("1 + 2").names == ()


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("", 0, "empty"),
        ("   ", 0, "empty"),
        ("1 +", 3, "formula ended"),
        ("(1 + 2", 6, "missing ')' to close the '(' at position 0"),
        ("1 + 2)", 5, "unmatched ')'"),
        ("a b", 2, "expected an operator before 'b'"),
        ("1 + * 2", 4, "found '*'"),
        ("2 * * 3", 4, "found '*'"),
        ("()", 1, "found ')'"),
        ("min()", 0, "at least 1"),
        ("abs(1, 2)", 0, "exactly 1"),
        ("min(1 2)", 6, "expected ',' or ')'"),
        ("min(1,", 6, "formula ended"),
        ("foo(1)", 0, "unknown function 'foo'"),
        ("a(1)", 0, "unknown function 'a'"),
        ("min + 1", 0, "'min' is a function"),
        ("1e", 0, "malformed number '1e'"),
        ("1.2.3", 0, "malformed number"),
        ("2a", 0, "malformed number '2a'"),
        ("1e999", 0, "too large"),
        ("a.b", 1, "unexpected character '.'"),
        ("a[0]", 1, "unexpected character '['"),
        ("__import__('os')", 11, "strings are not allowed"),
        ("'abc'", 0, "strings are not allowed"),
        ('"abc"', 0, "strings are not allowed"),
        ("lambda: 1", 6, "unexpected character ':'"),
        ("lambda x: x", 8, "unexpected character ':'"),  # the whole text is tokenized first
        ("a; b", 1, "unexpected character ';'"),
        ("a = 1", 2, "unexpected character '='"),
        ("a if b else c", 2, "expected an operator before 'if'"),
        ("a % b", 2, "unexpected character '%'"),
        ("a // b", 3, "found '/'"),
        ("\uff12", 0, "unexpected character"),  # a full-width digit is not a number
        ("caf\u00e9", 3, "unexpected character"),  # names are ASCII
        ("a\u00a0+ b", 1, "unexpected character"),  # non-breaking space
    ],
)
def test_parse_errors_name_the_position(text: str, position: int, message: str) -> None:
    with pytest.raises(FormulaError) as caught:
        parse(text)
    assert caught.value.position == position
    assert message in caught.value.message
    assert f"at position {position}" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "values", "position", "message"),
    [
        ("a + nope", {"a": 1.0}, 4, "unknown name 'nope'"),
        ("1 / zero", VALUES, 2, "division by zero"),
        ("1 / (a - a)", VALUES, 2, "division by zero"),
        ("sqrt(-1)", {}, 0, "sqrt(-1) is undefined"),
        ("log(0)", {}, 0, "log(0) is undefined"),
        ("log(-a)", VALUES, 0, "undefined"),
        ("exp(1000)", {}, 0, "overflows"),
        ("10 ^ 400", {}, 3, "overflows"),
        ("(-8) ^ (1 / 3)", {}, 5, "undefined"),  # no complex numbers
        ("0 ^ -1", {}, 2, "undefined"),
        ("1e308 * 10", {}, 6, "not a finite number"),
        ("1 / (1e308 * 10)", {}, 11, "not a finite number"),  # inf is caught where it appears
        ("a", {"a": math.nan}, 0, "not a finite number"),
        ("a", {"a": math.inf}, 0, "not a finite number"),
        ("a", {"a": "1"}, 0, "not a finite number"),
    ],
)
def test_evaluation_errors(text: str, values: dict, position: int, message: str) -> None:
    with pytest.raises(FormulaError) as caught:
        parse(text).evaluate(values)
    assert caught.value.position == position
    assert message in caught.value.message


def test_check_names_points_at_the_first_unknown_name() -> None:
    expression = parse("0.5 * a + 0.5 * typo")
    expression.check_names({"a", "typo"})
    with pytest.raises(FormulaError) as caught:
        expression.check_names({"a", "b"})
    assert caught.value.position == 16
    assert "unknown name 'typo'; known names: a, b" in caught.value.message


@pytest.mark.parametrize(
    "text",
    [
        "(" * 4_000 + "1" + ")" * 4_000,
        "(" * 10_000,
        "-" * 10_000,
        "- " * 4_000 + "1",
        "2 ^ " * 2_000 + "2",
        "min(" * 1_500 + "1" + ")" * 1_500,
        "(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1),
    ],
)
def test_deep_nesting_fails_cleanly(text: str) -> None:
    with pytest.raises(FormulaError, match="nests deeper than"):
        parse(text)


def test_nesting_up_to_the_cap_works() -> None:
    depth = MAX_DEPTH - 1  # the sign-free atom inside the parentheses is one more level
    assert parse("(" * depth + "a" + ")" * depth).evaluate(VALUES) == 1.0
    assert parse("1 ^ " * 60 + "2").evaluate({}) == 1.0  # 1 ^ (1 ^ (... ^ 2)) = 1


@pytest.mark.parametrize(
    "text",
    ["(" * 10_000 + "1" + ")" * 10_000, "a + " * 1_000_000 + "a", "1" * (MAX_LENGTH + 1)],
)
def test_long_formulas_are_refused_quickly(text: str) -> None:
    start = time.perf_counter()
    with pytest.raises(FormulaError, match=f"longer than {MAX_LENGTH}") as caught:
        parse(text)
    assert caught.value.position == MAX_LENGTH
    assert time.perf_counter() - start < 0.5


def test_a_long_flat_sum_parses_and_evaluates_without_recursion() -> None:
    text = "+".join(["a"] * 5_000)  # 9,999 characters: a flat chain, not 5,000 nested nodes
    assert len(text) <= MAX_LENGTH
    start = time.perf_counter()
    assert parse(text).evaluate({"a": 1.0}) == 5000.0
    assert time.perf_counter() - start < 1.0


def test_point_at_puts_the_caret_under_the_position() -> None:
    assert point_at("0.7 * a + c", 10) == "0.7 * a + c\n          ^"
    long = "a + " * 50 + "bad + " + "a + " * 50 + "a"
    position = long.index("bad")
    text_line, caret_line = point_at(long, position).split("\n")
    assert text_line.startswith("...") and text_line.endswith("...")
    assert text_line[caret_line.index("^") :].startswith("bad")


def test_the_module_never_evaluates_user_text_as_python() -> None:
    source = inspect.getsource(formula)
    assert not re.search(r"(?<![.\w])(eval|exec|compile)\(|import ast|literal_eval", source)
