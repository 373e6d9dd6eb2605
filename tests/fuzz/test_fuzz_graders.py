"""Fuzzing the `multi` grader's formula parser (openrft.rewards.formula), the OpenAI grader
templating (openrft.rewards.templating) and the grader-file parser (openrft.rewards.spec and
the grader types): each input parses or fails with its typed error naming the place."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from openrft.errors import GraderError
from openrft.rewards import build_grader
from openrft.rewards.formula import MAX_LENGTH, FormulaError, parse, point_at
from openrft.rewards.templating import TemplateError, openai_sample, render, template_paths
from openrft.types import GRADE_ERROR_KINDS, Sample

from ._fuzz import NASTY_TEXT, depths, fuzz, json_text, junk, materialize, mutated, texts, toml_text

# --- formulas -------------------------------------------------------------------------------

FORMULA_TOKENS = ("a", "b", "score_1", "_", "0", "1", "2.5", ".5", "1e3", "1e309", "1.2.3",
                  "7x", "+", "-", "*", "/", "^", "**", "(", ")", ",", " ", "\t", "min", "max",
                  "abs", "floor", "ceil", "exp", "sqrt", "log", "nope", "'", '"', "é", "٣",
                  "a.b", "a[0]", "__import__", "=")  # fmt: skip
NAMES = ("a", "b", "score_1")

formula_atoms = st.one_of(
    st.sampled_from(NAMES),
    st.sampled_from(("0", "1", "2.5", ".5", "1e3", "1e308", "0.0")),
)
valid_formulas = st.recursive(
    formula_atoms,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(("+", "-", "*", "/", "^", "**")), inner).map(" ".join),
        inner.map("-{}".format),
        inner.map("({})".format),
        st.tuples(
            st.sampled_from(("min", "max", "abs", "floor", "ceil", "exp", "sqrt", "log")),
            st.lists(inner, min_size=1, max_size=3),
        ).map(lambda call: f"{call[0]}({', '.join(call[1])})"),
    ),
    max_leaves=12,
)


@st.composite
def edited(draw: st.DrawFn, text: str) -> str:
    """`text` with a few characters inserted, deleted or replaced."""
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        new = draw(st.sampled_from(FORMULA_TOKENS))
        cut = draw(st.integers(0, 2))
        text = text[:at] + new + text[at + cut :]
    return text


formulas = st.one_of(
    valid_formulas,
    valid_formulas.flatmap(edited),
    st.lists(st.sampled_from(FORMULA_TOKENS), max_size=30).map("".join),
    texts,
    st.builds(lambda n, s: s * n, depths, st.sampled_from(("(", "-", "2^", "min(", "+"))),
    depths.map(lambda n: "(" * n + "a" + ")" * n),
    st.just("a+" * (MAX_LENGTH // 2) + "a"),
)
scores = st.one_of(st.floats(), st.sampled_from((0.0, -1.0, 1e308, True)), st.integers())


def _check_position(exc: FormulaError, text: str) -> None:
    assert type(exc) is FormulaError
    assert 0 <= exc.position <= len(text), (exc, len(text))
    assert point_at(text, exc.position).endswith("^")


@fuzz(1000)
@given(text=formulas, data=st.data())
def test_formula_parses_or_names_the_position(text: str, data: st.DataObject) -> None:
    try:
        expression = parse(text)
    except FormulaError as exc:
        _check_position(exc, text)
        return
    values = {name: data.draw(scores, label=name) for name in expression.names}
    try:
        result = expression.evaluate(values)
    except FormulaError as exc:
        _check_position(exc, text)
        return
    assert isinstance(result, float) and math.isfinite(result)


@fuzz(200)
@given(text=formulas)
def test_multi_grader_names_calculate_output(text: str) -> None:
    exact = {"type": "string_check", "operation": "eq", "input": "x", "reference": "x"}
    spec = {"type": "multi", "graders": dict.fromkeys(NAMES, exact), "calculate_output": text}
    try:
        build_grader(spec)
    except GraderError as exc:
        assert "calculate_output" in str(exc)


# --- templates ------------------------------------------------------------------------------

TEMPLATE_TOKENS = ("{{", "}}", "{", "}", " ", "sample", "item", ".", "output_text",
                   "output_json", "output_tools", "choices", "message", "content",
                   "reference_answer", "metadata", "messages", "0", "1", "-1", "--1", "²", "٣",
                   "9" * 5000, "x", "é", "\n", "$")  # fmt: skip
# Parts of placeholder paths: keys of the namespaces, list indices good and bad.
PATH_PARTS = ("messages", "choices", "output_json", "output_tools", "metadata", "value",
              "content", "reference_answer", "0", "1", "-1", "99", "--1", "²", "٣", "1_0",
              "9" * 5000, "", "x")  # fmt: skip
placeholders = st.tuples(
    st.sampled_from(("sample", "item", "items", "")),
    st.lists(st.sampled_from(PATH_PARTS), max_size=4),
    st.sampled_from((" ", "", "\t")),
).map(lambda p: f"{{{{{p[2]}{'.'.join((p[0], *p[1]))}{p[2]}}}}}")
templates = st.one_of(
    st.lists(st.one_of(placeholders, st.sampled_from(TEMPLATE_TOKENS)), max_size=6).map("".join),
    st.lists(st.sampled_from(TEMPLATE_TOKENS), max_size=16).map("".join),
    texts,
)
responses = st.one_of(texts, junk.map(json_text))


def _sample(response: str, reference: Any, metadata: Any) -> Sample:
    return Sample(
        id="ex:0",
        messages=({"role": "user", "content": "q"}, {"role": "assistant", "content": response}),
        reference_answer=reference,
        metadata=metadata if isinstance(metadata, dict) else {"value": metadata},
        example_id="ex",
    )


@fuzz(1000)
@given(template=templates, response=responses, reference=junk, metadata=junk)
def test_template_renders_or_names_the_placeholder(
    template: str, response: str, reference: Any, metadata: Any
) -> None:
    sample = _sample(response, materialize(reference), materialize(metadata))
    try:
        paths = template_paths(template)
        text = render(template, openai_sample(sample), sample.item())
    except TemplateError as exc:
        assert type(exc) is TemplateError
        assert "'{{" in str(exc) or "unbalanced" in str(exc)
        return
    assert isinstance(text, str)
    assert all(path.split(".")[0] in ("sample", "item") for path in paths)


@fuzz(300)
@given(template=templates, response=responses, reference=junk)
def test_string_check_grades_every_sample(template: str, response: str, reference: Any) -> None:
    """A template that builds never breaks grading: a sample it cannot render is a
    parse_error, never an exception out of grade()."""
    spec = {"type": "string_check", "operation": "eq", "input": template, "reference": "x"}
    try:
        grader = build_grader(spec)
    except GraderError as exc:
        assert "<inline>: input:" in str(exc)
        return
    (grade,) = grader.grade([_sample(response, materialize(reference), {})])
    assert grade.error is None or grade.error.kind in GRADE_ERROR_KINDS


# --- grader files ---------------------------------------------------------------------------

OUTPUT, ANSWER = "{{ sample.output_text }}", "{{ item.reference_answer }}"
STRING_CHECK = {"type": "string_check", "name": "exact", "operation": "eq",
                "input": OUTPUT, "reference": ANSWER}  # fmt: skip
SIMILARITY = {"type": "text_similarity", "name": "close", "evaluation_metric": "fuzzy_match",
              "input": OUTPUT, "reference": ANSWER, "pass_threshold": 0.5}  # fmt: skip
SPECS = [
    STRING_CHECK,
    SIMILARITY,
    {
        "type": "multi",
        "name": "answer",
        "calculate_output": "0.7 * exact + 0.3 * close",
        "graders": {"exact": STRING_CHECK, "close": SIMILARITY},
    },  # fmt: skip
    {
        "type": "regex",
        "name": "format",
        "pattern": "####\\s*-?[\\d,.]+\\s*$",
        "mode": "search",
        "flags": "im",
        "negate": False,
    },  # fmt: skip
    {"type": "json", "schema": {"type": "object", "properties": {"a": {"type": "number"}}}},
    {"type": "length", "target_tokens": 10, "max_tokens": 20},
    {
        "type": "weighted",
        "graders": [{"type": "exact_label", "weight": 0.9}, {"type": "regex", "pattern": "x"}],
    },  # fmt: skip
    {
        "type": "lambda",
        "url": "http://127.0.0.1:9/grade",
        "batch_size": 4,
        "concurrency": 2,
        "timeout_s": 30,
        "retries": 1,
        "backoff_s": 0.1,
        "headers": {"x-api-key": "k"},
        "metadata_shape": "top_level",
    },  # fmt: skip
    {
        "type": "judge",
        "rubric": "custom",
        "criteria": "Is {{ sample.output_text }} right?",
        "base_url": "http://127.0.0.1:9/v1",
        "model": "m",
        "scale": [1, 10],
    },  # fmt: skip
    {
        "type": "score_model",
        "name": "s",
        "model": "m",
        "range": [0, 1],
        "base_url": "http://127.0.0.1:9/v1",
        "input": [{"role": "user", "content": "rate {{ sample.output_text }}"}],
    },  # fmt: skip
]
# Grader types and fields, so that mutations switch types and add known fields. Types that
# import user code or load a model at build time are left out (python_function, python, code,
# local_model): building them from random references would import random modules.
SPEC_KEYS = ("type", "name", "operation", "input", "reference", "evaluation_metric",
             "pass_threshold", "graders", "calculate_output", "pattern", "mode", "flags",
             "negate", "schema", "schema_file", "target_tokens", "max_tokens", "weight", "url",
             "batch_size", "concurrency", "timeout_s", "retries", "backoff_s", "headers",
             "metadata_shape", "rubric", "criteria", "scale", "range", "labels",
             "passing_labels", "temperature", "grader")  # fmt: skip
SAFE_TYPES = ("string_check", "text_similarity", "multi", "regex", "json", "length", "weighted",
              "exact_label", "math", "lambda", "judge", "score_model", "label_model")  # fmt: skip
UNSAFE = ("python_function", "local_model", '"python"', '"code"', "= 'python'", "= 'code'",
          "= \"python\"", "= \"code\"")  # fmt: skip
spec_values = st.one_of(junk, st.sampled_from(SAFE_TYPES), st.sampled_from(NASTY_TEXT),
                        st.sampled_from(("a{4294967296}", "(" * 300 + ")" * 300, "[", "env:NOPE",
                                         "@@deep-600-schema@@")))  # fmt: skip
specs = st.sampled_from(SPECS).flatmap(lambda spec: mutated(spec, SPEC_KEYS, spec_values))


@pytest.fixture(scope="module")
def grader_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-graders")


def _spec_text(spec: Any, suffix: str) -> str:
    if suffix == ".json":
        return json_text(spec)
    try:
        return toml_text(spec if isinstance(spec, dict) else {"grader": spec})
    except (TypeError, ValueError):  # a value TOML cannot hold (tomli_w refuses it)
        return json_text(spec)


grader_files = st.one_of(
    st.tuples(specs, st.sampled_from((".json", ".toml"))).map(
        lambda pair: (_spec_text(*pair), pair[1])
    ),
    st.tuples(st.one_of(texts, junk.map(json_text)), st.sampled_from((".json", ".toml"))),
    st.tuples(depths.map(lambda n: "v = " + "[" * n + "]" * n), st.just(".toml")),
    st.tuples(depths.map(lambda n: "[" * n + "]" * n), st.just(".json")),
)


@fuzz(1000, slow=True)
@given(file=grader_files, as_bytes=st.binary(max_size=8))
def test_grader_file_builds_or_names_file_and_field(
    grader_dir: Path, file: tuple[str, str], as_bytes: bytes
) -> None:
    text, suffix = file
    assume(not any(word in text for word in UNSAFE))
    path = grader_dir / f"grader{suffix}"
    path.write_bytes(text.encode("utf-8", "surrogatepass") + as_bytes)
    try:
        grader = build_grader(str(path))
    except GraderError as exc:
        assert str(path) in str(exc), exc
        return
    assert callable(grader.grade)
