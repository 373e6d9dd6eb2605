"""OpenAI's string_check, text_similarity and multi graders built from their JSON objects:
scoring tables, templates (item fields, output_json), build errors with field paths, and
sub-grader error propagation in multi."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from openrft.errors import GraderError
from openrft.rewards.formula import parse
from openrft.rewards.grader import Grader, grade_safely
from openrft.rewards.openai_graders import GRADER_TYPES, SAMPLE_FIELDS, MultiGrader
from openrft.rewards.registry import GRADER_MODULES, build_grader, grader_types
from openrft.rewards.similarity import METRICS
from openrft.rewards.spec import SpecContext, load_grader_file
from openrft.types import Grade, Sample

from ._samples import make_sample


def _registry_complete() -> bool:
    try:
        grader_types()
    except ModuleNotFoundError:  # a sibling grader module (sandboxed, judge...) not written yet
        return False
    return True


REGISTRY_COMPLETE = _registry_complete()


def _dispatch(spec: Mapping[str, Any], ctx: SpecContext) -> Grader:
    kind = spec.get("type")
    if kind not in GRADER_TYPES:
        raise ctx.error("type", f"unknown grader type {kind!r}")
    return GRADER_TYPES[str(kind)](spec, ctx)


def build(spec: Mapping[str, Any]) -> Grader:
    """Through the registry; while a sibling module is missing, through this module's table."""
    if REGISTRY_COMPLETE:
        return build_grader(spec)
    return _dispatch(spec, SpecContext(build=_dispatch))


def grade(grader: Grader, response: str, reference: Any = None, **metadata: Any) -> Grade:
    return grade_safely(grader, [make_sample(response, reference, metadata)])[0]


OUTPUT = "{{ sample.output_text }}"
REFERENCE = "{{ item.reference_answer }}"


def string_check(operation: str = "eq", **fields: Any) -> dict[str, Any]:
    spec = {"type": "string_check", "name": "check", "input": OUTPUT, "reference": REFERENCE}
    return {**spec, "operation": operation, **fields}


def similarity(metric: str = "fuzzy_match", **fields: Any) -> dict[str, Any]:
    spec = {"type": "text_similarity", "name": "sim", "input": OUTPUT, "reference": REFERENCE}
    return {**spec, "evaluation_metric": metric, **fields}


def multi(formula: str, **graders: dict[str, Any]) -> dict[str, Any]:
    return {"type": "multi", "name": "combo", "graders": graders, "calculate_output": formula}


def test_the_module_provides_the_openai_types() -> None:
    assert "openrft.rewards.openai_graders" in GRADER_MODULES
    assert set(GRADER_TYPES) == {"string_check", "text_similarity", "multi"}
    assert {"output_text", "output_json", "output_tools", "choices"} <= set(SAMPLE_FIELDS)


@pytest.mark.skipif(not REGISTRY_COMPLETE, reason="a sibling grader module is not written yet")
def test_the_registry_finds_the_openai_types() -> None:
    types = grader_types()
    assert all(types[name] is factory for name, factory in GRADER_TYPES.items())


# --- string_check ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "response", "reference", "expected"),
    [
        ("eq", "Paris", "Paris", 1.0),
        ("eq", "Paris ", "Paris", 0.0),  # no trimming, as OpenAI compares
        ("eq", "Paris\n", "Paris", 0.0),
        ("eq", "paris", "Paris", 0.0),
        ("eq", "", "", 1.0),
        ("eq", "", "Paris", 0.0),
        ("eq", "🙂 é", "🙂 é", 1.0),
        ("eq", "Pаris", "Paris", 0.0),  # Cyrillic "а"
        ("eq", "42", 42, 1.0),  # a non-string reference renders as JSON
        ("eq", '["a", "b"]', ["a", "b"], 1.0),
        ("ne", "Lyon", "Paris", 1.0),
        ("ne", "Paris", "Paris", 0.0),
        ("like", "The answer is Paris.", "Paris", 1.0),
        ("like", "The answer is paris.", "Paris", 0.0),
        ("like", "Par is", "Paris", 0.0),
        ("like", "Paris", "The answer is Paris", 0.0),  # the reference must be in the input
        ("like", "x" * 1_000_000 + "Paris", "Paris", 1.0),
        ("ilike", "THE ANSWER IS PARIS", "paris", 1.0),
        ("ilike", "STRASSE", "straße", 1.0),  # casefold, not lower
        ("ilike", "Pаris", "paris", 0.0),
        ("ilike", "", "paris", 0.0),
    ],
)
def test_string_check(operation: str, response: str, reference: Any, expected: float) -> None:
    result = grade(build(string_check(operation)), response, reference)
    assert result.error is None
    assert result.score == expected
    assert result.components == {"check": expected}


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ('{"answer": "Paris", "extra": [1, 2], "nested": {"x": null}}', 1.0),
        ('{"answer": "Lyon", "confidence": 0.9}', 0.0),
        ('  {"answer": "Paris"}\n', 1.0),  # JSON may be surrounded by whitespace
    ],
)
def test_output_json_fields_ignore_extra_fields(response: str, expected: float) -> None:
    grader = build(string_check(input="{{ sample.output_json.answer }}"))
    assert grade(grader, response, "Paris").score == expected


@pytest.mark.parametrize(
    "response",
    ["Paris", '{"other": 1}', "[1, 2]", '{"answer": "Paris"', "null", "", '"answer"'],
)
def test_output_json_that_lacks_the_field_is_a_parse_error(response: str) -> None:
    grader = build(string_check(input="{{ sample.output_json.answer }}"))
    result = grade(grader, response, "Paris")
    assert result.score is None and result.error is not None
    assert result.error.kind == "parse_error"
    assert result.error.message.startswith("input: ")


def test_a_missing_item_field_fails_only_that_sample() -> None:
    grader = build(string_check(reference="{{ item.expected.city }}"))
    samples = [
        make_sample("Paris", metadata={"expected": {"city": "Paris"}}),
        make_sample("Paris", metadata={"expected": {"country": "France"}}),
        make_sample("Paris"),
    ]
    scored, missing_leaf, missing_root = grade_safely(grader, samples)
    assert scored.score == 1.0
    for failed in (missing_leaf, missing_root):
        assert failed.error is not None and failed.error.kind == "parse_error"
        assert failed.error.message.startswith("reference: ")
    assert "'city'" in str(missing_leaf.error) and "'expected'" in str(missing_root.error)


def test_templates_see_the_whole_row() -> None:
    grader = build(string_check("like", input="{{ item.messages.0.content }}", reference="answer"))
    assert grade(grader, "whatever").score == 1.0  # the prompt is "What is the answer?"
    grader = build(string_check(input="{{ sample.choices.0.message.content }}"))
    assert grade(grader, "Paris", "Paris").score == 1.0


# --- text_similarity ------------------------------------------------------------------------


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_text_similarity_scores_with_the_metric(metric: str) -> None:
    expected = METRICS[metric]("the cat sat", "the cat ran")
    result = grade(build(similarity(metric)), "the cat sat", "the cat ran")
    assert result.score == pytest.approx(expected)
    assert result.components == {"sim": result.score}


@pytest.mark.parametrize(
    ("metric", "threshold", "passed"),
    [("rouge_1", 0.6, 1.0), ("rouge_2", 0.6, 0.0), ("rouge_2", 0.5, 1.0), ("rouge_3", 0, 1.0)],
)
def test_pass_threshold_is_reported_as_a_component(
    metric: str, threshold: float, passed: float
) -> None:
    result = grade(
        build(similarity(metric, pass_threshold=threshold)), "the cat sat", "the cat ran"
    )
    assert result.components["passed"] == passed
    assert result.score == pytest.approx(METRICS[metric]("the cat sat", "the cat ran"))


@pytest.mark.parametrize("metric", sorted(METRICS))
@pytest.mark.parametrize(
    "response", ["", "   ", "!!!", "🙂" * 100, "\x00", '{"answer": "Paris", "x": [1]}', "\ud800"]
)
def test_text_similarity_of_odd_responses_is_a_score(metric: str, response: str) -> None:
    result = grade(build(similarity(metric)), response, "Paris is the capital of France")
    assert result.error is None and result.score is not None
    assert math.isfinite(result.score) and 0.0 <= result.score <= 1.0


@pytest.mark.parametrize("metric", ["fuzzy_match", "rouge_l", "meteor", "bleu"])
def test_a_megabyte_response_grades_quickly(metric: str) -> None:
    response = "Paris is the capital of France. " * 32_000  # about 1 MB
    start = time.perf_counter()
    result = grade(build(similarity(metric)), response, "Paris is the capital of France.")
    assert time.perf_counter() - start < 5.0
    assert result.score is not None and 0.0 <= result.score < 0.5


def test_text_similarity_template_errors_are_parse_errors() -> None:
    result = grade(build(similarity(reference="{{ item.nope }}")), "Paris")
    assert result.error is not None and result.error.kind == "parse_error"
    assert "nope" in result.error.message


# --- build errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (string_check(operaton="eq"), "operaton: unknown field; did you mean 'operation'?"),
        (string_check("contains"), "operation: 'contains' is not one of: eq, ne, like, ilike"),
        ({"type": "string_check", "reference": "x", "operation": "eq"}, "input: is required"),
        (string_check(input=5), "input: must be a string"),
        (string_check(input="{{ item.x"), "input: unbalanced"),
        (string_check(reference="{{ foo.bar }}"), "reference: '{{ foo.bar }}': placeholders"),
        (string_check(input="{{ sample.output_txt }}"), "input: '{{ sample.output_txt }}': sam"),
        (string_check(name=""), "name: must not be empty"),
        (string_check(name=3), "name: must be a string"),
        (similarity("cosine"), "evaluation_metric: 'cosine' needs an embedding model"),
        (similarity("rouge_6"), "evaluation_metric: 'rouge_6' is not one of: fuzzy_match"),
        (similarity(evaluation_metrics="bleu"), "did you mean 'evaluation_metric'?"),
        (similarity(pass_threshold=1.5), "pass_threshold: must be between 0 and 1, got 1.5"),
        (similarity(pass_threshold=math.nan), "pass_threshold: must be between 0 and 1"),
        (similarity(pass_threshold="high"), "pass_threshold: must be a number"),
        (similarity(pass_threshold=True), "pass_threshold: must be a number"),
    ],
)
def test_build_errors_name_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(GraderError) as caught:
        build(spec)
    assert str(caught.value).startswith("<inline>: ")
    assert message in str(caught.value)


A = string_check()
B = similarity()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "multi", "calculate_output": "1"}, "graders: is required"),
        ({**multi("a", a=A), "graders": [A]}, "graders: must be a table/object"),
        (multi("1"), "graders: needs at least one sub-grader"),
        (multi("1", **{"my-key": A}), "graders.my-key: keys are the names calculate_output"),
        (multi("min", min=A), "graders.min: 'min' is a calculate_output function"),
        ({**multi("a", a=A), "weights": {}}, "weights: unknown field"),
        ({**multi("a", a=A), "calculate_output": 0.5}, "calculate_output: must be a string"),
        ({k: v for k, v in multi("a", a=A).items() if k != "calculate_output"}, "is required"),
        (multi("a", a="string_check"), "graders.a: must be a grader table/object"),  # type: ignore[arg-type]
        (multi("a", a={"type": "nope"}), "graders.a.type: unknown grader type 'nope'"),
        (multi("a", a=string_check("contains")), "graders.a.operation: 'contains' is not"),
        (multi("a", a=similarity("cosine")), "graders.a.evaluation_metric: 'cosine'"),
        (
            multi("outer", outer=multi("a", a=string_check(input="{{ x }}"))),
            "graders.outer.graders.a.input: '{{ x }}'",
        ),
        (
            multi("0.7 * a + c", a=A, b=B),
            "calculate_output: unknown name 'c'; known names: a, b (at position 10)\n"
            "    0.7 * a + c\n              ^",
        ),
        (multi("0.7 * a +", a=A), "calculate_output: expected a number, a name or '(' but the"),
        (multi("0.7 * a +", a=A), "(at position 9)\n    0.7 * a +\n             ^"),
        (multi("__import__('os')", a=A), "calculate_output: strings are not allowed"),
        (multi("a.real", a=A), "calculate_output: unexpected character '.'"),
        (multi("(" * 100 + "a" + ")" * 100, a=A), "calculate_output: formula nests deeper"),
        (multi("inner", inner=multi("x + y", x=A)), "graders.inner.calculate_output: unknown"),
    ],
)
def test_multi_build_errors_name_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(GraderError) as caught:
        build(spec)
    assert message in str(caught.value)


# --- multi ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "score", "components"),
    [
        # a = eq fails (0); b = fuzzy("kitten", "sitting") = 8/13 >= 0.5, so it passes.
        ("kitten", 0.3 * 8 / 13, {"a": 0.0, "b": 8 / 13, "b/passed": 1.0}),
        ("sitting", 1.0, {"a": 1.0, "b": 1.0, "b/passed": 1.0}),  # 0.7 * 1 + 0.3 * 1
        ("", 0.0, {"a": 0.0, "b": 0.0, "b/passed": 0.0}),
    ],
)
def test_weighted_multi(response: str, score: float, components: dict[str, float]) -> None:
    grader = build(multi("0.7 * a + 0.3 * b", a=A, b=similarity(pass_threshold=0.5)))
    result = grade(grader, response, "sitting")
    assert result.error is None
    assert result.score == pytest.approx(score)
    assert result.components == pytest.approx(components)


def test_nested_multi() -> None:
    inner = multi("min(x, y)", x=string_check("like"), y=similarity("rouge_1"))
    grader = build(multi("inner * z + 0 * unused", inner=inner, z=string_check("ne"), unused=A))
    # x: "the cat" is in the response (1); y: rouge_1("the cat sat", "the cat") = 2 * (2/3 * 1)
    # / (2/3 + 1) = 0.8; inner = min(1, 0.8); z: the response is not "the cat" (1).
    result = grade(grader, "the cat sat", "the cat")
    assert result.score == pytest.approx(0.8)
    assert result.components == pytest.approx(
        {"inner": 0.8, "inner/x": 1.0, "inner/y": 0.8, "z": 1.0, "unused": 0.0}
    )


def test_a_sub_grader_error_fails_the_sample_with_its_kind_and_key() -> None:
    grader = build(multi("0.5 * a + 0.5 * b", a=string_check(reference="{{ item.nope }}"), b=B))
    samples = [make_sample("Paris", "Paris", {"nope": "Paris"}), make_sample("Paris", "Paris")]
    scored, failed = grade_safely(grader, samples)
    assert scored.score == 1.0
    assert failed.score is None and failed.error is not None
    assert failed.error.kind == "parse_error"
    assert failed.error.message.startswith("a: reference: '{{ item.nope }}'")


def test_errors_propagate_through_nested_multi_and_list_other_failures() -> None:
    broken = string_check(reference="{{ item.nope }}")
    inner = multi("x * y", x=A, y=similarity(input="{{ sample.output_json.answer }}"))
    grader = build(multi("inner + b", inner=inner, b=broken))
    result = grade(grader, "not json", "Paris")
    assert result.error is not None and result.error.kind == "parse_error"
    assert result.error.message.startswith("inner: y: input: ")
    assert result.error.message.endswith("(also failed: b)")


def test_a_formula_that_cannot_be_evaluated_is_an_invalid_output() -> None:
    grader = build(multi("a / b + sqrt(b - 1)", a=B, b=A))
    result = grade(grader, "Paris!", "Paris")  # a = 1 - 1/11 (one extra character), b = 0
    assert result.error is not None and result.error.kind == "invalid_output"
    expected = "calculate_output: division by zero in 0.909091 / 0 (at position 2)"
    assert result.error.message == expected
    assert grade(grader, "Paris", "Paris").score == 1.0  # 1 / 1 + sqrt(0)


class Exploding:
    """A grader whose batch call raises, as a buggy user grader would."""

    name = "exploding"

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        raise RuntimeError("boom")


def test_a_raising_sub_grader_is_a_runtime_error_of_its_key() -> None:
    grader = MultiGrader("combo", {"ok": build(A), "bad": Exploding()}, parse("ok + bad"))
    result = grade(grader, "Paris", "Paris")
    assert result.error is not None and result.error.kind == "runtime_error"
    assert result.error.message.startswith("bad: grader 'exploding' raised RuntimeError: boom")
    assert grader.grade([]) == []


def test_an_openai_grader_json_file_builds_as_it_is(tmp_path: Path) -> None:
    body = {
        "grader": {
            "type": "multi",
            "name": "answer",
            "graders": {
                "ref_similarity": {
                    "name": "ref_similarity",
                    "type": "text_similarity",
                    "input": "{{sample.output_text}}",
                    "reference": "{{item.reference_answer}}",
                    "evaluation_metric": "fuzzy_match",
                },
                "exact": {
                    "name": "exact",
                    "type": "string_check",
                    "input": "{{sample.output_text}}",
                    "reference": "{{item.reference_answer}}",
                    "operation": "eq",
                },
            },
            "calculate_output": "0.5 * ref_similarity + 0.5 * exact",
        }
    }
    path = tmp_path / "grader.json"
    path.write_text(json.dumps(body))
    grader = build(load_grader_file(path))
    assert grader.name == "answer"
    assert grade(grader, "kitten", "sitting").score == pytest.approx(0.5 * 8 / 13)


def test_a_row_without_a_reference_is_an_error_not_null():
    from openrft.rewards import build_grader

    grader = build_grader(
        {
            "type": "string_check",
            "name": "same",
            "operation": "eq",
            "input": "{{ sample.output_text }}",
            "reference": "{{ item.reference_answer }}",
        }
    )
    [missing] = grader.grade([make_sample("null")])  # a reply "null" must not match a None
    assert missing.score is None and "has no reference answer" in missing.error.message
