"""MathAnswerGrader: final-answer extraction, number parsing and exact comparison, table-driven."""

from __future__ import annotations

import time
from fractions import Fraction
from typing import Any

import pytest

from openrft.rewards import MathAnswerGrader, extract_final_answer, parse_number

from ._samples import make_sample

# (id, response, extracted answer)
EXTRACT_CASES: list[tuple[str, str, str | None]] = [
    ("gsm8k_marker", "She pays 3 * 6 = 18.\n#### 18", "18"),
    ("several_markers", "#### 17\nWait, recount.\n#### 18", "18"),
    ("markers_on_one_line", "#### 5 #### 7", "7"),
    ("marker_with_units", "#### $18.00 dollars", "$18.00 dollars"),
    ("marker_then_chatter", "#### 18\n\nHope these 2 steps help!", "18"),
    ("marker_as_heading", "#### Final answer\nShe earns 18 dollars.", "18"),
    ("marker_with_words", "#### Paris", "Paris"),
    ("empty_after_marker", "The total is 18.\n####", "18"),
    ("marker_beats_boxed", "\\boxed{17} so #### 18", "18"),
    ("boxed", "Thus $\\boxed{42}$.", "42"),
    ("last_boxed", "\\boxed{1} then \\boxed{2}", "2"),
    ("boxed_nested_braces", "\\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
    ("boxed_nested_boxed", "\\boxed{\\boxed{5}}", "5"),
    ("boxed_unbalanced_last", "\\boxed{6} and \\boxed{7", "6"),
    ("boxed_text", "\\boxed{x^{2}+1}", "x^{2}+1"),
    ("last_number", "First 3 apples, then 1,234 pears.", "1,234"),
    ("last_decimal", "It costs 2.50 dollars.", "2.50"),
    ("last_negative", "The change is -7 degrees", "-7"),
    ("range_is_not_negative", "pages 3-5", "5"),
    ("last_fraction", "So 3/4 of the cake.", "3/4"),
    ("tex_fraction", "the answer is \\dfrac{1}{2}", "\\dfrac{1}{2}"),
    ("dollar_negative", "a loss of -$18", "-$18"),
    ("unicode_digits", "الجواب ١٨", "18"),
    ("full_width_digits", "答えは１８です", "18"),
    ("json_extra_fields_answer_last", '{"steps": 3, "answer": 18}', "18"),
    ("json_extra_fields_answer_first", '{"answer": 18, "steps": 3}', "3"),
    ("empty", "", None),
    ("whitespace", " \n\t ", None),
    ("no_digits", "I do not know.", None),
    ("superscript_is_not_a_digit", "x²", None),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [case[1:] for case in EXTRACT_CASES],
    ids=[case[0] for case in EXTRACT_CASES],
)
def test_extract_final_answer(text: str, expected: str | None) -> None:
    assert extract_final_answer(text) == expected


PARSE_CASES: list[tuple[str, Fraction | None]] = [
    ("18", Fraction(18)),
    ("18.00", Fraction(18)),
    ("$18.00", Fraction(18)),
    ("\\$18", Fraction(18)),
    ("-18", Fraction(-18)),
    ("-$18", Fraction(-18)),
    ("+4", Fraction(4)),
    ("1,234", Fraction(1234)),
    ("1,234,567.5", Fraction(2469135, 2)),
    ("1\\,234", Fraction(1234)),
    (".5", Fraction(1, 2)),
    ("18.", Fraction(18)),
    ("18 dollars", Fraction(18)),
    ("18 eggs per day.", Fraction(18)),
    ("18 \\text{ cm}", Fraction(18)),
    ("50%", Fraction(50)),
    ("50\\%", Fraction(50)),
    ("3/4", Fraction(3, 4)),
    ("36 / 2", Fraction(18)),
    ("-3/4", Fraction(-3, 4)),
    ("\\frac{3}{4}", Fraction(3, 4)),
    ("\\dfrac{3}{4}", Fraction(3, 4)),
    ("-\\frac{1}{2}", Fraction(-1, 2)),
    ("\\frac34", Fraction(3, 4)),
    ("x = 5", Fraction(5)),
    ("**18**", Fraction(18)),
    ("١٨", Fraction(18)),
    ("−5", Fraction(-5)),  # U+2212 minus sign
    ("1/0", None),
    ("1,2345", None),
    ("18 - 5", None),
    ("18 dollars and 50 cents", None),
    ("\\frac{\\pi}{2}", None),
    ("x + 1", None),
    ("Paris", None),
    ("", None),
    ("1" * 5000, None),  # more digits than int() accepts: not a crash
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse_number(text: str, expected: Fraction | None) -> None:
    assert parse_number(text) == expected


# (id, response, reference, score, answer_found)
GRADE_CASES: list[tuple[str, str, Any, float, float]] = [
    ("gsm8k", "3 * 6 = 18\n#### 18", "18", 1.0, 1.0),
    ("gsm8k_reference_solution", "#### 18", "She has 3 * 6 = 18 eggs.\n#### 18", 1.0, 1.0),
    ("decimal_equals_int", "\\boxed{18.00}", "18", 1.0, 1.0),
    ("fraction_equals_int", "36/2", "18", 1.0, 1.0),
    ("dollars", "The answer is $18.00.", "18", 1.0, 1.0),
    ("units", "#### 18 eggs", "18", 1.0, 1.0),
    ("thousands", "Total: 1,234", "1234", 1.0, 1.0),
    ("negative", "#### -5", "-5", 1.0, 1.0),
    ("wrong_sign", "#### 5", "-5", 0.0, 1.0),
    ("tex_fraction", "\\boxed{\\dfrac{3}{4}}", "0.75", 1.0, 1.0),
    ("int_reference", "#### 42", 42, 1.0, 1.0),
    ("float_reference", "#### 0.1", 0.1, 1.0, 1.0),
    ("boxed_reference", "#### 7", "\\boxed{7}", 1.0, 1.0),
    ("list_reference", "#### 0.5", ["1/3", "1/2"], 1.0, 1.0),
    ("symbolic_string_match", "\\boxed{\\frac{\\pi}{2}}", "\\dfrac{\\pi}{2}", 1.0, 1.0),
    ("symbolic_reference_kept_whole", "#### 1", "x + 1", 0.0, 1.0),
    ("several_markers_last_wins", "#### 18\n#### 17", "18", 0.0, 1.0),
    ("wrong", "#### 17", "18", 0.0, 1.0),
    ("unicode_digits", "#### ١٨", "18", 1.0, 1.0),
    ("empty", "", "18", 0.0, 0.0),
    ("no_answer", "I cannot solve this.", "18", 0.0, 0.0),
    ("huge_output", "7 " * 500_000 + "#### 18", "18", 1.0, 1.0),
    ("huge_digits", "9" * 1_000_000, "18", 0.0, 1.0),
]


@pytest.mark.parametrize(
    ("response", "reference", "score", "found"),
    [case[1:] for case in GRADE_CASES],
    ids=[case[0] for case in GRADE_CASES],
)
def test_math_answer_scores(response: str, reference: Any, score: float, found: float) -> None:
    [grade] = MathAnswerGrader().grade([make_sample(response, reference)])
    assert grade.error is None
    assert grade.score == score
    assert dict(grade.components) == {"math_answer": score, "answer_found": found}


@pytest.mark.parametrize(
    ("reference", "fragment"),
    [
        (None, "row ex-1 has no reference_answer"),
        ("", "holds no answer"),
        ("#### ", "holds no answer"),
        ({"value": 18}, "cannot use reference_answer"),
        ([], "holds no answer"),
    ],
)
def test_unusable_references_are_errors(reference: Any, fragment: str) -> None:
    [grade] = MathAnswerGrader().grade([make_sample("#### 18", reference)])
    assert grade.score is None
    assert grade.error is not None and grade.error.kind == "invalid_output"
    assert fragment in grade.error.message


@pytest.mark.parametrize(
    "response",
    ["\\boxed{" * 200_000, "{" * 500_000 + "}" * 500_000, "1," * 500_000, "-" * 1_000_000],
    ids=["open_boxes", "deep_braces", "comma_chain", "dashes"],
)
def test_adversarial_megabyte_outputs_grade_quickly(response: str) -> None:
    start = time.perf_counter()
    [grade] = MathAnswerGrader().grade([make_sample(response, "18")])
    assert time.perf_counter() - start < 3.0
    assert grade.error is None and grade.score == 0.0
