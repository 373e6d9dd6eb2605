"""Built-in grader types built from specs: field validation with paths, and scoring tables."""

from __future__ import annotations

import json
import math

import pytest

from openrft.errors import GraderError
from openrft.rewards.builtin_types import GRADER_TYPES
from openrft.rewards.spec import SpecContext
from openrft.types import Sample


def build(spec, tmp_path=None):
    def dispatch(child, ctx):
        return GRADER_TYPES[child["type"]](child, ctx)

    context = SpecContext(
        source="grader.toml", base_dir=tmp_path or SpecContext().base_dir, build=dispatch
    )
    return dispatch(spec, context)


def sample(response: str, reference=None, tokens: int = 0, **metadata) -> Sample:
    prompt = {"role": "user", "content": "q"}
    return Sample(
        id="e:0",
        messages=(prompt, {"role": "assistant", "content": response}),
        reference_answer=reference,
        metadata=metadata,
        example_id="e",
        completion_tokens=tokens,
    )


@pytest.mark.parametrize(
    ("response", "reference", "score"),
    [
        ("#### 18", "18", 1.0),
        ("The answer is \\boxed{\\frac{1}{2}}", "0.5", 1.0),  # symbolic: needs math-verify
        ("\\boxed{x + 1}", "1 + x", 1.0),
        ("#### 17", "18", 0.0),
        ("", "18", 0.0),
        ("#### 1 #### 2 #### 18", "18", 1.0),  # the last #### wins
    ],
)
def test_math_type(response, reference, score):
    [grade] = build({"type": "math"}).grade([sample(response, reference)])
    assert grade.error is None and grade.score == score


def test_math_without_symbolic_keeps_exact_comparison():
    [grade] = build({"type": "math", "symbolic": False}).grade([sample("\\boxed{x + 1}", "1 + x")])
    assert grade.score == 0.0


@pytest.mark.parametrize(
    ("spec", "response", "score"),
    [
        ({"pattern": r"\d+"}, "abc 12", 1.0),
        ({"pattern": r"\d+", "mode": "full"}, "abc 12", 0.0),
        ({"pattern": r"(positive|negative)", "mode": "full", "flags": "i"}, " Positive ", 1.0),
        ({"pattern": r"sorry", "negate": True, "flags": "i"}, "Sorry, I can't", 0.0),
        ({"pattern": r"<answer>.*</answer>", "flags": "s"}, "<answer>\nx\n</answer>", 1.0),
        ({"pattern": "x"}, "", 0.0),
    ],
)
def test_regex_type(spec, response, score):
    [grade] = build({"type": "regex", **spec}).grade([sample(response)])
    assert grade.score == score


SCHEMA = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}}


@pytest.mark.parametrize(
    ("response", "score", "valid"),
    [
        ('{"answer": "Paris"}', 1.0, 1.0),
        (
            '{"answer": "Paris", "extra": [1, 2]}',
            1.0,
            1.0,
        ),  # extra fields are allowed by the schema
        ('```json\n{"answer": "Paris"}\n```', 1.0, 1.0),
        ('{"answer": 3}', 0.0, 1.0),
        ("Paris", 0.0, 0.0),
        ('{"answer": "Paris"', 0.0, 0.0),
        ("", 0.0, 0.0),
    ],
)
def test_json_type(response, score, valid):
    [grade] = build({"type": "json", "schema": SCHEMA}).grade([sample(response)])
    assert (grade.score, grade.components["valid_json"]) == (score, valid)


def test_json_schema_file(tmp_path):
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    grader = build({"type": "json", "schema_file": "schema.json"}, tmp_path)
    assert grader.grade([sample('{"answer": "x"}')])[0].score == 1.0


@pytest.mark.parametrize(
    ("tokens", "score"), [(10, 1.0), (32, 1.0), (80, 0.5), (128, 0.0), (500, 0.0)]
)
def test_length_type_uses_completion_tokens(tokens, score):
    grader = build({"type": "length", "target_tokens": 32, "max_tokens": 128})
    assert grader.grade([sample("x", tokens=tokens)])[0].score == pytest.approx(score)


def test_length_type_counts_words_when_tokens_are_unknown():
    grader = build({"type": "length", "target_tokens": 2, "max_tokens": 4})
    assert grader.grade([sample("one two three")])[0].score == pytest.approx(0.5)


def test_weighted_combines_and_reports_each_component():
    spec = {
        "type": "weighted",
        "graders": [
            {"type": "math", "weight": 0.9},
            {"type": "regex", "name": "format", "pattern": r"####\s*\d+\s*$", "weight": 0.1},
        ],
    }
    right, unformatted = build(spec).grade([sample("#### 18", "18"), sample("it is 18", "18")])
    assert right.score == pytest.approx(1.0)
    assert unformatted.score == pytest.approx(0.9)
    assert unformatted.components["math"] == 1.0 and unformatted.components["format"] == 0.0
    assert unformatted.components["math/answer_found"] == 1.0


def test_weighted_sub_grader_error_makes_the_sample_an_error():
    spec = {"type": "weighted", "graders": [{"type": "math"}, {"type": "exact_label"}]}
    [grade] = build(spec).grade([sample("#### 18", None)])
    assert grade.score is None and grade.error.kind == "invalid_output"
    assert grade.error.message.startswith("math:")


def test_python_function_type_resolves_relative_to_the_grader_file(tmp_path):
    (tmp_path / "r.py").write_text("def reward(response, item):\n    return len(response) / 10\n")
    grader = build({"type": "python_function", "function": "r.py:reward", "name": "len"}, tmp_path)
    [grade] = grader.grade([sample("abcde")])
    assert grade.score == 0.5 and grader.name == "len"


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"type": "regex"}, "grader.toml: pattern: is required"),
        ({"type": "regex", "pattern": "("}, "pattern: not a valid regular expression"),
        (
            {"type": "regex", "pattern": "a", "mode": "all"},
            "mode: 'all' is not one of: search, full",
        ),
        ({"type": "regex", "pattern": "a", "flags": "q"}, "flags: unknown flag 'q'"),
        (
            {"type": "regex", "pattern": "a", "patern": "b"},
            "patern: unknown field; did you mean 'pattern'?",
        ),
        ({"type": "json", "schema": {"type": 12}}, "schema: not a valid JSON Schema"),
        ({"type": "length", "target_tokens": 10, "max_tokens": 5}, "max_tokens: must be greater"),
        (
            {"type": "length", "target_tokens": "10", "max_tokens": 50},
            "target_tokens: must be an integer",
        ),
        ({"type": "weighted", "graders": []}, "graders: needs at least one grader"),
        (
            {"type": "weighted", "graders": [{"type": "math", "weight": "x"}]},
            "graders[0].weight: must be a number",
        ),
        (
            {"type": "weighted", "graders": [{"type": "math"}, {"type": "math"}]},
            "graders[1].name: two sub-graders",
        ),
        ({"type": "math", "symbolic": "yes"}, "symbolic: must be true or false"),
    ],
)
def test_spec_errors_name_the_field(spec, fragment):
    with pytest.raises(GraderError) as error:
        build(spec)
    assert fragment in str(error.value)


def test_scores_are_always_finite():
    grader = build({"type": "length", "target_tokens": 0, "max_tokens": 1})
    assert all(math.isfinite(g.score) for g in grader.grade([sample("x" * 10_000)]))


def test_math_answer_names_the_math_type_too():
    [grade] = build({"type": "math_answer"}).grade([sample("#### 42", reference="42")])
    assert grade.score == 1.0


def test_a_schema_inline_and_in_a_file_is_refused(tmp_path):
    (tmp_path / "s.json").write_text("{}")
    spec = {"type": "json", "schema": {}, "schema_file": "s.json"}
    with pytest.raises(GraderError, match="not both"):
        build(spec, tmp_path)
