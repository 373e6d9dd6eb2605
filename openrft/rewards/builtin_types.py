"""Built-in verifiable grader types for grader files: exact_label, math, python_function,
regex, json (validity and JSON Schema), length (token efficiency) and weighted (a weighted
sum of sub-graders, each reported as its own component).

    type = "weighted"
    [[graders]]
    type = "math"
    weight = 0.9
    [[graders]]
    type = "regex"
    name = "format"
    pattern = '####\\s*-?[\\d,.]+\\s*$'
    weight = 0.1
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema

from openrft.rewards.exact_label import ExactLabelGrader
from openrft.rewards.grader import Grader, clip_message, grade_safely, is_thread_safe
from openrft.rewards.math_answer import MathAnswerGrader
from openrft.rewards.python_function import ISOLATIONS, PythonFunctionGrader
from openrft.rewards.spec import SpecContext, check_fields, get_choice, get_field
from openrft.types import Grade, Sample


def _named(grader: Any, name: str) -> Any:
    grader.name = name
    return grader


def exact_label_from_spec(spec: Mapping[str, Any], ctx: SpecContext) -> Grader:
    check_fields(spec, {"type", "name"}, ctx)
    return _named(ExactLabelGrader(), get_field(spec, "name", str, ctx, "exact_label"))


def math_from_spec(spec: Mapping[str, Any], ctx: SpecContext) -> Grader:
    check_fields(spec, {"type", "name", "symbolic"}, ctx)
    symbolic = get_field(spec, "symbolic", bool, ctx, True)
    return MathAnswerGrader(name=get_field(spec, "name", str, ctx, "math"), symbolic=symbolic)


def python_function_from_spec(spec: Mapping[str, Any], ctx: SpecContext) -> Grader:
    check_fields(spec, {"type", "name", "function", "timeout_s", "isolation"}, ctx)
    reference = get_field(spec, "function", str, ctx)
    target, _, attr = reference.rpartition(":")
    if target.endswith(".py"):
        target = str(Path(target).expanduser())
        reference = f"{ctx.base_dir / target}:{attr}"  # relative to the grader file
    timeout_s = get_field(spec, "timeout_s", float, ctx, ctx.timeout_s)
    isolation = get_choice(spec, "isolation", ISOLATIONS, ctx, "process")
    grader = PythonFunctionGrader(reference, timeout_s=timeout_s, isolation=isolation)
    return _named(grader, get_field(spec, "name", str, ctx, grader.name))


class RegexGrader:
    """1.0 when the response matches `pattern` (searched anywhere, or the full response)."""

    thread_safe = True  # grades from several threads at once (openrft.train.pipeline)

    def __init__(self, name: str, pattern: re.Pattern[str], full: bool, negate: bool):
        self.name, self.pattern, self.full, self.negate = name, pattern, full, negate

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        grades = []
        for sample in samples:
            text = sample.response.strip() if self.full else sample.response
            found = (self.pattern.fullmatch if self.full else self.pattern.search)(text)
            score = float(bool(found) != self.negate)
            grades.append(Grade(score, {self.name: score}))
        return grades


def regex_from_spec(spec: Mapping[str, Any], ctx: SpecContext) -> Grader:
    check_fields(spec, {"type", "name", "pattern", "mode", "flags", "negate"}, ctx)
    flags = 0
    for letter in get_field(spec, "flags", str, ctx, ""):
        if letter not in "imsx":
            raise ctx.error("flags", f"unknown flag {letter!r}; use i, m, s or x")
        flags |= {"i": re.I, "m": re.M, "s": re.S, "x": re.X}[letter]
    try:
        pattern = re.compile(get_field(spec, "pattern", str, ctx), flags)
    except re.error as exc:
        raise ctx.error("pattern", f"not a valid regular expression: {exc}") from exc
    full = get_choice(spec, "mode", ("search", "full"), ctx, "search") == "full"
    negate = get_field(spec, "negate", bool, ctx, False)
    return RegexGrader(get_field(spec, "name", str, ctx, "regex"), pattern, full, negate)


class JsonGrader:
    """1.0 when the response (or its fenced ```json block) is valid JSON that conforms to the
    schema; components `valid_json` and `schema_ok` say which part failed."""

    thread_safe = True  # grades from several threads at once (openrft.train.pipeline)

    def __init__(self, name: str, schema: dict[str, Any] | None):
        self.name = name
        self.validator = jsonschema.Draft202012Validator(schema) if schema is not None else None

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        return [self._grade_one(sample) for sample in samples]

    def _grade_one(self, sample: Sample) -> Grade:
        text = sample.response.strip()
        fenced = re.search(r"```(?:json)?\s*\n(.*?)```", text, re.S)
        try:
            value = json.loads(fenced.group(1) if fenced else text)
        except ValueError:
            return Grade(0.0, {self.name: 0.0, "valid_json": 0.0, "schema_ok": 0.0})
        schema_ok = 1.0
        if self.validator is not None and next(self.validator.iter_errors(value), None):
            schema_ok = 0.0
        return Grade(schema_ok, {self.name: schema_ok, "valid_json": 1.0, "schema_ok": schema_ok})


def json_from_spec(spec: Mapping[str, Any], ctx: SpecContext) -> Grader:
    check_fields(spec, {"type", "name", "schema", "schema_file"}, ctx)
    schema = get_field(spec, "schema", dict, ctx, None)
    if "schema_file" in spec and schema is not None:
        raise ctx.error("schema_file", "give the schema inline (schema) or as a file, not both")
    if "schema_file" in spec:
        path = ctx.base_dir / Path(get_field(spec, "schema_file", str, ctx)).expanduser()
        try:
            schema = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ctx.error("schema_file", f"cannot read JSON Schema {path}: {exc}") from exc
    if schema is not None:
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ctx.error("schema", f"not a valid JSON Schema: {exc.message}") from exc
    return JsonGrader(get_field(spec, "name", str, ctx, "json"), schema)


class LengthGrader:
    """Token efficiency: 1.0 at or under `target_tokens`, falling linearly to 0 at `max_tokens`.
    Counts generated tokens when known, else whitespace-separated words."""

    thread_safe = True  # grades from several threads at once (openrft.train.pipeline)

    def __init__(self, name: str, target_tokens: int, max_tokens: int):
        self.name, self.target, self.max = name, target_tokens, max_tokens

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        grades = []
        for sample in samples:
            length = sample.completion_tokens or len(sample.response.split())
            over = max(0, length - self.target) / max(1, self.max - self.target)
            score = max(0.0, 1.0 - over)
            grades.append(Grade(score, {self.name: score}))
        return grades


def length_from_spec(spec: Mapping[str, Any], ctx: SpecContext) -> Grader:
    check_fields(spec, {"type", "name", "target_tokens", "max_tokens"}, ctx)
    target = get_field(spec, "target_tokens", int, ctx)
    maximum = get_field(spec, "max_tokens", int, ctx)
    if not 0 <= target < maximum:
        raise ctx.error(
            "max_tokens", f"must be greater than target_tokens ({target}), got {maximum}"
        )
    return LengthGrader(get_field(spec, "name", str, ctx, "length"), target, maximum)


class WeightedGrader:
    """Score = sum of weight x sub-grader score. Each sub-grader is reported as its own
    component (`reward/<name>/mean`); a sub-grader error makes the sample an error."""

    def __init__(self, name: str, parts: list[tuple[str, float, Grader]]):
        self.name, self.parts = name, parts
        self.thread_safe = all(is_thread_safe(grader) for _, _, grader in parts)

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        started = time.perf_counter()
        results = [
            (key, weight, grade_safely(grader, samples)) for key, weight, grader in self.parts
        ]
        latency = (time.perf_counter() - started) / max(1, len(samples))
        grades = []
        for i in range(len(samples)):
            components: dict[str, float] = {}
            total, failed = 0.0, None
            for key, weight, part in results:
                grade = part[i]
                if grade.error is not None:
                    failed = failed or Grade.failed(
                        grade.error.kind, clip_message(f"{key}: {grade.error.message}"), latency
                    )
                    continue
                total += weight * grade.score
                components[key] = grade.score
                components.update(
                    {f"{key}/{k}": v for k, v in grade.components.items() if k != key}
                )
            grades.append(failed or Grade(total, components, latency_s=latency))
        return grades


def weighted_from_spec(spec: Mapping[str, Any], ctx: SpecContext) -> Grader:
    check_fields(spec, {"type", "name", "graders"}, ctx)
    entries = get_field(spec, "graders", list, ctx)
    if not entries:
        raise ctx.error("graders", "needs at least one grader")
    parts, names = [], set()
    for index, entry in enumerate(entries):
        where = f"graders[{index}]"
        if not isinstance(entry, Mapping):
            raise ctx.error(where, "must be a grader table")
        weight = get_field(entry, "weight", float, ctx.child(where), 1.0)
        grader = ctx.build_child({k: v for k, v in entry.items() if k != "weight"}, where)
        if grader.name in names:
            raise ctx.error(
                f"{where}.name", f"two sub-graders are named {grader.name!r}; names must differ"
            )
        names.add(grader.name)
        parts.append((grader.name, weight, grader))
    return WeightedGrader(get_field(spec, "name", str, ctx, "weighted"), parts)


GRADER_TYPES = {
    "exact_label": exact_label_from_spec,
    "math": math_from_spec,
    "math_answer": math_from_spec,  # the built-in's name works as a type too, as exact_label's
    "python_function": python_function_from_spec,
    "regex": regex_from_spec,
    "json": json_from_spec,
    "length": length_from_spec,
    "weighted": weighted_from_spec,
}
