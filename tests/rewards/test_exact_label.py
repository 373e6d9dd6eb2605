"""ExactLabelGrader: label normalisation and matching, table-driven, adversarial rows included."""

from __future__ import annotations

from typing import Any

import pytest

from openrft.rewards import ExactLabelGrader, grade_safely, normalize_label

from ._samples import make_sample


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris", "paris"),
        ("  New   York\n\t", "new york"),
        ("well-known", "wellknown"),
        ("a - b", "a b"),
        ("«Bonjour» !", "bonjour"),  # Pi/Pf quotes, P* removed
        ("5 $ + 3 €", "5 3"),  # S* symbols removed
        ("ＰＡＲＩＳ", "paris"),  # full-width, through NFKC
        ("Straße", "strasse"),  # casefold
        ("café", "café"),  # accents are letters, kept
        ("", ""),
        ("?!...", ""),
        ("١٨", "١٨"),  # digits of other scripts are kept, not translated
    ],
)
def test_normalize_label(text: str, expected: str) -> None:
    assert normalize_label(text) == expected


# (id, response, reference, expected score)
MATCH_CASES: list[tuple[str, str, Any, float]] = [
    ("exact", "Paris", "Paris", 1.0),
    ("case_and_punctuation", "  paris. ", "PARIS", 1.0),
    ("trailing_newlines", "positive\n\n", "Positive", 1.0),
    ("inner_whitespace", "new \t york", "New York", 1.0),
    ("emoji_symbol", "Paris ✅", "paris", 1.0),
    ("full_width", "ＰＡＲＩＳ", "Paris", 1.0),
    ("quoted", '"Paris"', "Paris", 1.0),
    ("markdown_bold", "**Paris**", "Paris", 1.0),
    ("sentence", "The answer is Paris", "Paris", 0.0),
    ("split_word", "Par is", "Paris", 0.0),
    ("accent_differs", "cafe", "café", 0.0),
    ("empty_response", "", "Paris", 0.0),
    ("whitespace_response", " \n\t ", "Paris", 0.0),
    ("punctuation_response", "?!", "Paris", 0.0),
    ("json_with_extra_fields", '{"label": "Paris", "confidence": 0.9}', "Paris", 0.0),
    ("int_reference", "1", 1, 1.0),
    ("float_reference", "2.5", 2.5, 1.0),  # "2.5" -> "25" on both sides
    ("bool_reference", "True", True, 1.0),
    ("list_any_match", "b", ["A", "B"], 1.0),
    ("list_no_match", "C", ["A", "B"], 0.0),
    ("tuple_reference", "yes", ("yes", "y"), 1.0),
    ("list_with_none", "a", [None, "A"], 1.0),
    ("huge_response", "paris " * 200_000, "Paris", 0.0),
    ("unicode_digits", "١٨", "18", 0.0),
]


@pytest.mark.parametrize(
    ("response", "reference", "score"),
    [case[1:] for case in MATCH_CASES],
    ids=[case[0] for case in MATCH_CASES],
)
def test_exact_label_scores(response: str, reference: Any, score: float) -> None:
    [grade] = ExactLabelGrader().grade([make_sample(response, reference)])
    assert grade.error is None
    assert grade.score == score
    assert dict(grade.components) == {"exact_label": score}
    assert grade.latency_s >= 0.0


@pytest.mark.parametrize(
    ("reference", "fragment"),
    [
        (None, "row ex-1 has no reference_answer"),
        ({"label": "Paris"}, "got dict"),
        ([["Paris"]], "got list"),
        ("?!", "has no letters or digits"),
        ([], "has no letters or digits"),
        ([None], "has no letters or digits"),
    ],
)
def test_unusable_references_are_errors_not_zeros(reference: Any, fragment: str) -> None:
    [grade] = ExactLabelGrader().grade([make_sample("Paris", reference)])
    assert grade.score is None
    assert grade.error is not None and grade.error.kind == "invalid_output"
    assert fragment in grade.error.message


def test_a_bad_row_does_not_spoil_the_batch() -> None:
    samples = [
        make_sample("yes", "yes", index=0),
        make_sample("yes", None, example_id="ex-2"),
        make_sample("no", "yes", index=2),
    ]
    grades = grade_safely(ExactLabelGrader(), samples)
    assert [g.score for g in grades] == [1.0, None, 0.0]
    assert grades[1].error is not None
    assert grades[1].error.message == "row ex-2 has no reference_answer"
