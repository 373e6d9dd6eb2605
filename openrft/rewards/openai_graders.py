"""OpenAI's grader types, configured exactly as OpenAI's grader JSON objects: `string_check`,
`text_similarity` and `multi` (sub-graders combined by a `calculate_output` formula).

    {"type": "multi", "name": "answer", "calculate_output": "0.7 * exact + 0.3 * close",
     "graders": {
       "exact": {"type": "string_check", "name": "exact", "operation": "eq",
                 "input": "{{ sample.output_text }}", "reference": "{{ item.reference_answer }}"},
       "close": {"type": "text_similarity", "name": "close", "evaluation_metric": "fuzzy_match",
                 "input": "{{ sample.output_text }}", "reference": "{{ item.reference_answer }}"}}}

Owns building these graders from specs (unknown fields, malformed templates and formulas fail at
build time, naming the field) and grading: a placeholder that does not resolve for one sample
(`{{ item.nope }}`, `{{ sample.output_json.answer }}` on non-JSON output) makes that sample a
parse_error; it is never scored 0. Metrics live in `similarity`, formulas in `formula`.
"""

from __future__ import annotations

import re
import textwrap
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from openrft.rewards.formula import FUNCTIONS, Expression, FormulaError, parse, point_at
from openrft.rewards.grader import Grader, clip_message, grade_safely, is_thread_safe
from openrft.rewards.similarity import METRICS, UNAVAILABLE
from openrft.rewards.spec import SpecContext, check_fields, get_choice, get_field
from openrft.rewards.templating import TemplateError, openai_sample, render, template_paths
from openrft.types import Grade, Message, Sample

_EMPTY_TURN: Message = {"role": "assistant", "content": ""}
# The fields of the `sample` namespace, so `{{ sample.output_txt }}` fails at build time.
SAMPLE_FIELDS = tuple(openai_sample(Sample(id="", messages=(_EMPTY_TURN,))))
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def _contains(text: str, reference: str) -> bool:
    return reference in text


def _contains_ignoring_case(text: str, reference: str) -> bool:
    # casefold, not lower: Unicode-aware ("STRASSE" contains "straße").
    return reference.casefold() in text.casefold()


OPERATIONS: dict[str, Callable[[str, str], bool]] = {
    "eq": lambda text, reference: text == reference,
    "ne": lambda text, reference: text != reference,
    "like": _contains,  # the reference is a substring of the input
    "ilike": _contains_ignoring_case,
}


# --- templates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Templates:
    """The `input` and `reference` templates of a string_check or text_similarity grader."""

    input: str
    reference: str

    def render(self, sample: Sample) -> tuple[str, str]:
        """Both texts for one sample; raises TemplateError naming the field that failed."""
        namespace, item = openai_sample(sample), sample.item()
        rendered = []
        for field, template in (("input", self.input), ("reference", self.reference)):
            try:
                rendered.append(render(template, namespace, item))
            except TemplateError as exc:
                raise TemplateError(f"{field}: {exc}") from exc
        return rendered[0], rendered[1]


def _template(spec: Mapping[str, Any], key: str, ctx: SpecContext) -> str:
    template = get_field(spec, key, str, ctx)
    try:
        paths = template_paths(template)
    except TemplateError as exc:
        raise ctx.error(key, str(exc)) from exc
    for path in paths:
        head, _, rest = path.partition(".")
        field = rest.split(".")[0]
        if head == "sample" and rest and field not in SAMPLE_FIELDS:
            fields = ", ".join(SAMPLE_FIELDS)
            raise ctx.error(key, f"'{{{{ {path} }}}}': sample has no {field!r}; it has {fields}")
    return template


def _templates(spec: Mapping[str, Any], ctx: SpecContext) -> Templates:
    return Templates(_template(spec, "input", ctx), _template(spec, "reference", ctx))


def _name(spec: Mapping[str, Any], ctx: SpecContext, default: str) -> str:
    name = get_field(spec, "name", str, ctx, default)
    if not name.strip():
        raise ctx.error("name", "must not be empty")
    return name


def _grade_one(sample: Sample, templates: Templates, score: Callable[[str, str], Grade]) -> Grade:
    """Renders the templates for one sample and scores them, timing both."""
    start = time.perf_counter()
    try:
        text, reference = templates.render(sample)
    except TemplateError as exc:
        return Grade.failed("parse_error", clip_message(str(exc)), time.perf_counter() - start)
    try:
        grade = score(text, reference)
    except Exception as exc:  # a metric library bug costs this sample, not the batch
        message = clip_message(f"{type(exc).__name__}: {exc}")
        return Grade.failed("runtime_error", message, time.perf_counter() - start)
    return replace(grade, latency_s=time.perf_counter() - start)


# --- string_check ---------------------------------------------------------------------------


class StringCheckGrader:
    """1.0 when `operation` holds between the rendered input and reference, else 0.0.

    Texts compare exactly as rendered (no trimming): OpenAI's semantics, where a trailing
    newline makes `eq` fail. Components: {name: score}.
    """

    thread_safe = True  # grades from several threads at once (openrft.train.pipeline)

    def __init__(self, name: str, templates: Templates, operation: str):
        self.name, self.templates, self.operation = name, templates, operation

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        return [_grade_one(sample, self.templates, self._score) for sample in samples]

    def _score(self, text: str, reference: str) -> Grade:
        score = 1.0 if OPERATIONS[self.operation](text, reference) else 0.0
        return Grade(score, {self.name: score})


def string_check_from_spec(spec: Mapping[str, Any], ctx: SpecContext) -> Grader:
    check_fields(spec, {"type", "name", "input", "reference", "operation"}, ctx)
    operation = get_choice(spec, "operation", tuple(OPERATIONS), ctx)
    return StringCheckGrader(_name(spec, ctx, "string_check"), _templates(spec, ctx), operation)


# --- text_similarity ------------------------------------------------------------------------


class TextSimilarityGrader:
    """The similarity of the rendered input to the reference, in [0, 1] (see `similarity`).

    Components: {name: score}, plus "passed" (1.0 or 0.0) when a pass_threshold is set.
    """

    thread_safe = True  # grades from several threads at once (openrft.train.pipeline)

    def __init__(self, name: str, templates: Templates, metric: str, threshold: float | None):
        self.name, self.templates, self.metric, self.threshold = name, templates, metric, threshold

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        return [_grade_one(sample, self.templates, self._score) for sample in samples]

    def _score(self, text: str, reference: str) -> Grade:
        score = METRICS[self.metric](text, reference)
        components = {self.name: score}
        if self.threshold is not None:
            components["passed"] = 1.0 if score >= self.threshold else 0.0
        return Grade(score, components)


def text_similarity_from_spec(spec: Mapping[str, Any], ctx: SpecContext) -> Grader:
    fields = {"type", "name", "input", "reference", "evaluation_metric", "pass_threshold"}
    check_fields(spec, fields, ctx)
    metric = get_choice(spec, "evaluation_metric", (*METRICS, *UNAVAILABLE), ctx)
    if metric in UNAVAILABLE:
        raise ctx.error("evaluation_metric", f"{metric!r} {UNAVAILABLE[metric]}")
    threshold = get_field(spec, "pass_threshold", float, ctx, None)
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ctx.error("pass_threshold", f"must be between 0 and 1, got {threshold}")
    name = _name(spec, ctx, "text_similarity")
    return TextSimilarityGrader(name, _templates(spec, ctx), metric, threshold)


# --- multi ----------------------------------------------------------------------------------


class MultiGrader:
    """Score = `calculate_output` evaluated with each sub-grader's score under its key.

    Components: each sub-grader's score under its key, plus its own components as
    "key/component", leaving out the echo of its score (a lone component, or the one named
    after the sub-grader). A sample that any sub-grader fails on is an error of the first
    failing key's kind, its message prefixed by that key; a formula that cannot be evaluated
    for a sample (division by zero, sqrt of a negative) is an invalid_output.
    """

    def __init__(self, name: str, graders: dict[str, Grader], formula: Expression):
        self.name, self.graders, self.formula = name, graders, formula
        self.thread_safe = all(is_thread_safe(grader) for grader in graders.values())

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        if not samples:
            return []
        start = time.perf_counter()
        results = {key: grade_safely(grader, samples) for key, grader in self.graders.items()}
        latency = (time.perf_counter() - start) / len(samples)
        return [
            self._combine({key: grades[i] for key, grades in results.items()}, latency)
            for i in range(len(samples))
        ]

    def _combine(self, parts: dict[str, Grade], latency: float) -> Grade:
        failed = [(key, grade.error) for key, grade in parts.items() if grade.error is not None]
        if failed:
            key, error = failed[0]
            others = ", ".join(other for other, _ in failed[1:])
            also = f" (also failed: {others})" if others else ""
            message = f"{key}: {clip_message(error.message, 400)}{also}"
            return Grade.failed(error.kind, clip_message(message), latency)
        scores: dict[str, float] = {}
        for key, grade in parts.items():
            assert grade.score is not None  # grade_safely: a grade without an error has a score
            scores[key] = float(grade.score)
        try:
            score = self.formula.evaluate(scores)
        except FormulaError as exc:
            return Grade.failed("invalid_output", clip_message(f"calculate_output: {exc}"), latency)
        components = dict(scores)
        for key, grade in parts.items():
            name = getattr(self.graders[key], "name", key)
            components.update(_sub_components(key, name, grade))
        return Grade(score, components, latency_s=latency)


def _sub_components(key: str, name: str, grade: Grade) -> dict[str, float]:
    """A sub-grader's own components as "key/component", without the echo of its score."""
    if len(grade.components) <= 1:
        return {}
    return {f"{key}/{part}": value for part, value in grade.components.items() if part != name}


def _formula(spec: Mapping[str, Any], keys: Collection[str], ctx: SpecContext) -> Expression:
    text = get_field(spec, "calculate_output", str, ctx)
    try:
        expression = parse(text)
        expression.check_names(keys)
    except FormulaError as exc:
        shown = textwrap.indent(point_at(text, exc.position), "    ")
        raise ctx.error("calculate_output", f"{exc}\n{shown}") from exc
    return expression


def _check_key(key: object, ctx: SpecContext) -> None:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ctx.error(
            f"graders.{key}", "keys are the names calculate_output uses: [A-Za-z_][A-Za-z0-9_]*"
        )
    if key in FUNCTIONS:
        raise ctx.error(f"graders.{key}", f"{key!r} is a calculate_output function; rename it")


def multi_from_spec(spec: Mapping[str, Any], ctx: SpecContext) -> Grader:
    check_fields(spec, {"type", "name", "graders", "calculate_output"}, ctx)
    name = _name(spec, ctx, "multi")
    specs = get_field(spec, "graders", dict, ctx)
    if not specs:
        raise ctx.error("graders", "needs at least one sub-grader")
    for key in specs:
        _check_key(key, ctx)
    # The formula is checked before the sub-graders are built: building one can be slow.
    formula = _formula(spec, list(specs), ctx)
    graders = {key: ctx.build_child(sub, f"graders.{key}") for key, sub in specs.items()}
    return MultiGrader(name, graders, formula)


GRADER_TYPES: dict[str, Callable[[Mapping[str, Any], SpecContext], Grader]] = {
    "string_check": string_check_from_spec,
    "text_similarity": text_similarity_from_spec,
    "multi": multi_from_spec,
}
