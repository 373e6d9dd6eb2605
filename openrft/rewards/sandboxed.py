"""Graders that run code in the sandbox (`sandbox.py`): `python` and `code`.

- `python` is OpenAI's python grader: a `source` that defines `grade(sample, item) -> float`,
  run for a whole batch in one sandbox process (a crash fails only the sample in flight).
- `code` is a verifiable code reward: the code in the model's response runs against the row's
  unit tests (MBPP-style assert lists or HumanEval-style `check(candidate)`), each test under
  its own time budget. Bad code is a low score, not a grader error.

Owns building both from specs (mistakes fail at build time, naming the field), turning sandbox
results into Grades, extracting code from markdown, and the test harness that runs inside the
sandbox. What the sandbox enforces is in docs/sandbox.md.
"""

from __future__ import annotations

import ast
import inspect
import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from openrft.rewards.grader import Grader, clip_message, to_grade
from openrft.rewards.sandbox import SandboxLimits, SandboxResult, check_entry, run_calls
from openrft.rewards.spec import SpecContext, check_fields, get_choice, get_field
from openrft.rewards.templating import openai_sample
from openrft.types import Grade, Sample

SOURCE_LIMIT = 256 * 1024  # bytes of a python grader's source (OpenAI's limit)
SOURCE_FILENAME = "<source>"  # how tracebacks name the grader source: "(at <source>:3)"
# OpenAI's python grader limits: 2 minutes, 2 GB of memory, one CPU.
PYTHON_LIMITS = SandboxLimits(cpu_s=120.0, wall_s=120.0, memory_mb=2048, file_size_mb=64)
# Per test of the code grader: generous for MBPP/HumanEval solutions, short for infinite loops.
CODE_LIMITS = SandboxLimits(cpu_s=10.0, wall_s=5.0, memory_mb=1024, file_size_mb=64)
LIMIT_FIELDS = ("cpu_s", "wall_s", "memory_mb", "file_size_mb")
PYTHON_FENCES = ("", "python", "py", "python3")  # fence info strings taken as Python code


def parse_limits(
    spec: Mapping[str, Any], ctx: SpecContext, default: SandboxLimits
) -> SandboxLimits:
    """The optional `limits` table: any of cpu_s, wall_s, memory_mb, file_size_mb (positive)."""
    table = get_field(spec, "limits", dict, ctx, {})
    sub = ctx.child("limits")
    check_fields(table, set(LIMIT_FIELDS), sub)
    values: dict[str, float] = {}
    for key in LIMIT_FIELDS:
        value = get_field(table, key, float, sub, float(getattr(default, key)))
        if not (math.isfinite(value) and value > 0):
            raise sub.error(key, f"must be a positive number, got {value!r}")
        values[key] = value
    return replace(default, **values)


def _name(spec: Mapping[str, Any], ctx: SpecContext, default: str) -> str:
    name = get_field(spec, "name", str, ctx, default)
    if not name.strip():
        raise ctx.error("name", "must not be empty")
    return name


# --- python: OpenAI's python grader ---------------------------------------------------------


@dataclass(frozen=True)
class PythonSourceGrader:
    """Runs `grade(sample, item)` from `source` in one sandbox process per batch."""

    name: str
    source: str
    limits: SandboxLimits

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        calls = [(openai_sample(sample), sample.item()) for sample in samples]
        results = run_calls(self.source, "grade", calls, self.limits, filename=SOURCE_FILENAME)
        return [self._to_grade(s, r) for s, r in zip(samples, results, strict=True)]

    def _to_grade(self, sample: Sample, result: SandboxResult) -> Grade:
        if result.ok:
            return to_grade(result.value, self.name, result.wall_s)
        message = clip_message(f"{self.name} on sample {sample.id}: {result.message}")
        return Grade.failed(result.error_kind or "runtime_error", message, result.wall_s)  # type: ignore[arg-type]


def check_source(source: str, ctx: SpecContext) -> None:
    """Size, syntax and a top-level `grade(sample, item)`; raises GraderError naming `source`."""
    size = len(source.encode("utf-8"))
    if size > SOURCE_LIMIT:
        raise ctx.error("source", f"is {size} bytes; the limit is {SOURCE_LIMIT} (256 KB)")
    try:
        tree = ast.parse(source, SOURCE_FILENAME)
    except SyntaxError as exc:
        raise ctx.error("source", f"does not compile: line {exc.lineno}: {exc.msg}") from exc
    except ValueError as exc:  # null bytes
        raise ctx.error("source", f"does not compile: {exc}") from exc
    grade = [
        node for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "grade"
    ]  # fmt: skip
    if not grade:
        raise ctx.error("source", "defines no top-level function grade(sample, item)")
    node = grade[-1]
    if isinstance(node, ast.AsyncFunctionDef):
        raise ctx.error("source", f"line {node.lineno}: grade must be a plain def, not async def")
    positional = len(node.args.posonlyargs) + len(node.args.args)
    if positional < 2 and node.args.vararg is None:
        message = f"line {node.lineno}: grade must take two arguments (sample, item)"
        raise ctx.error("source", message)


def build_python_grader(spec: Mapping[str, Any], ctx: SpecContext) -> Grader:
    check_fields(spec, {"type", "name", "source", "image_tag", "limits"}, ctx)
    name = _name(spec, ctx, "python")
    source = get_field(spec, "source", str, ctx)
    get_field(spec, "image_tag", str, ctx, "")  # OpenAI's runtime image: accepted, not used
    limits = parse_limits(spec, ctx, PYTHON_LIMITS)
    check_source(source, ctx)
    # Load it once in a sandbox now: a missing package or a failing top level stops the job
    # at start instead of failing every sample.
    probe = check_entry(source, "grade", limits, filename=SOURCE_FILENAME)
    if not probe.ok:
        raise ctx.error("source", f"fails to load in the sandbox: {probe.message}")
    return PythonSourceGrader(name, source, limits)


# --- code: the response's code against the row's unit tests ---------------------------------


def extract_code(response: str) -> str:
    """The last ```python / ```py / bare ``` block (unclosed counts), else the whole response."""
    blocks: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for line in response.splitlines():
        fence = line.strip()
        if fence.startswith("```"):
            if current is None:
                current = []
                blocks.append(((fence[3:].split() or [""])[0].lower(), current))
            else:
                current = None
        elif current is not None:
            current.append(line)
    code = [body for lang, body in blocks if lang in PYTHON_FENCES]
    return textwrap.dedent("\n".join(code[-1])) if code else response


def _compiles(code: str) -> bool:
    try:
        compile(code, "<candidate>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError):
        return False
    return True


@dataclass(frozen=True)
class _Plan:
    """One sample's tests, ready for the sandbox."""

    calls: list[tuple[Any, ...]]
    setup_field: str


@dataclass(frozen=True)
class CodeGrader:
    """Scores the response's code by the share (or all) of the row's tests that pass."""

    name: str
    tests_field: str
    style: str  # "asserts" (a list of assert statements) or "humaneval" (check(candidate))
    score_mode: str  # "fraction" or "all"
    setup_field: str  # item field with code run before the candidate; "" for none
    limits: SandboxLimits  # per test; wall_s is each test's SIGALRM budget

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        plans = [self._plan(index, sample) for index, sample in enumerate(samples)]
        calls = [call for plan in plans if isinstance(plan, _Plan) for call in plan.calls]
        # A call may load setup + candidate + run one test, each with wall_s: the process
        # limit is the backstop for code that SIGALRM cannot interrupt (long C calls).
        backstop = replace(self.limits, wall_s=3 * self.limits.wall_s + 1)
        harness = _harness_source()
        results = iter(run_calls(harness, "_run_test", calls, backstop) if calls else [])
        return [
            self._score(plan, [next(results) for _ in plan.calls]) if isinstance(plan, _Plan)
            else plan
            for plan in plans
        ]  # fmt: skip

    def _plan(self, index: int, sample: Sample) -> Grade | _Plan:
        item = sample.item()
        tests = item.get(self.tests_field)
        entry_point = item.get("entry_point") if self.style == "humaneval" else None
        setup = item.get(self.setup_field, "") if self.setup_field else ""
        problem = _check_item(self.style, self.tests_field, tests, entry_point)
        if problem is None and not isinstance(setup, str):
            problem = f"item field {self.setup_field!r} must be a string of code"
        if problem is not None:
            return Grade.failed("invalid_output", f"{self.name} on sample {sample.id}: {problem}")
        code = extract_code(sample.response)
        if not _compiles(code) and setup and _compiles(setup + code):
            code, setup = setup + code, ""  # a completion-style body that continues the prompt
        if not _compiles(code):
            components = {"tests_passed": 0.0, "compiled": 0.0, "timed_out": 0.0}
            return Grade(score=0.0, components=components)
        key = f"{index}:{sample.id}"
        tests = [tests] if isinstance(tests, str) else tests
        wall = self.limits.wall_s
        return _Plan(
            [(key, setup, code, test, entry_point, wall) for test in tests], self.setup_field
        )

    def _score(self, plan: _Plan, results: list[SandboxResult]) -> Grade:
        latency = sum(r.wall_s for r in results)
        broken = [r for r in results if not r.ok and r.reason in ("start", "load")]
        if broken:  # the sandbox itself failed, not the candidate
            return Grade.failed("runtime_error", clip_message(broken[0].message), latency)
        if any(_flag(r, "setup_error") for r in results):
            message = f"{self.name}: the setup code in item field {plan.setup_field!r} failed"
            return Grade.failed("runtime_error", message, latency)
        passed = sum(_flag(r, "passed") for r in results)
        timed_out = any(r.error_kind == "timeout" or _flag(r, "timed_out") for r in results)
        fraction = passed / len(results)
        score = fraction if self.score_mode == "fraction" else float(passed == len(results))
        components = {"tests_passed": fraction, "compiled": 1.0, "timed_out": float(timed_out)}
        return Grade(score=score, components=components, latency_s=latency)


def _flag(result: SandboxResult, key: str) -> bool:
    """A flag of the harness's answer; anything unexpected (a crash, junk) counts as false."""
    return result.ok and isinstance(result.value, dict) and bool(result.value.get(key))


def _check_item(style: str, field: str, tests: Any, entry_point: Any) -> str | None:
    """What is wrong with a row's test fields, or None."""
    if tests is None:
        return f"item field {field!r} is missing"
    if style == "humaneval":
        if not isinstance(tests, str):
            return f"item field {field!r} must be the test code defining check(candidate)"
        if not isinstance(entry_point, str) or not entry_point.isidentifier():
            return "item field 'entry_point' must name the function under test"
        return None
    if isinstance(tests, str):
        tests = [tests]
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        return f"item field {field!r} must be a non-empty list of assert statements (strings)"
    return None


def build_code_grader(spec: Mapping[str, Any], ctx: SpecContext) -> Grader:
    fields = {"type", "name", "tests_field", "style", "score", "setup_field", "limits"}
    check_fields(spec, fields, ctx)
    style = get_choice(spec, "style", ("asserts", "humaneval"), ctx, "asserts")
    default_tests = "test" if style == "humaneval" else "test_list"
    tests_field = get_field(spec, "tests_field", str, ctx, default_tests)
    if not tests_field:
        raise ctx.error("tests_field", "must name an item field")
    # HumanEval's prompt holds the imports and the signature the response may leave out.
    setup_field = get_field(spec, "setup_field", str, ctx, "prompt" if style == "humaneval" else "")
    return CodeGrader(
        name=_name(spec, ctx, "code"),
        tests_field=tests_field,
        style=style,
        score_mode=get_choice(spec, "score", ("fraction", "all"), ctx, "fraction"),
        setup_field=setup_field,
        limits=parse_limits(spec, ctx, CODE_LIMITS),
    )


# --- the harness: these two functions run inside the sandbox, not here ----------------------


def _harness_call(fn: Callable[[], object], timeout_s: float) -> str:
    """In the sandbox: fn() under a SIGALRM budget; returns "ok", "timeout" or "error"."""
    import signal

    class Timeout(BaseException):  # not Exception: `except Exception` in the candidate
        pass  # cannot swallow it

    def expire(*_: object) -> None:
        raise Timeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout_s, 0.05)  # re-fires if a bare except ate it
    try:
        fn()
        return "ok"
    except Timeout:
        return "timeout"
    except BaseException:  # a failing assert, any exception, sys.exit: the test failed
        return "error"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _run_test(
    key: str, setup: str, code: str, test: str, entry_point: str | None, timeout_s: float
) -> dict[str, bool]:
    """In the sandbox: one test of one candidate; the candidate is loaded once per key."""
    import builtins
    import sys

    state, table = _run_test.__dict__, vars(builtins)  # `table`: clear() below removes vars()
    base = state.setdefault("base", (dict(table), sys.stdout, sys.getrecursionlimit()))
    if state.get("key") != key:
        # A new candidate: undo what the previous one may have changed in the interpreter.
        table.clear()
        table.update(base[0])
        sys.stdout, sys.stderr = base[1], sys.__stderr__
        sys.setrecursionlimit(base[2])
        namespace: dict[str, Any] = {"__name__": "candidate", "__builtins__": builtins}
        loaded = _harness_call(lambda: exec(setup, namespace), timeout_s) if setup else "ok"
        state.update(key=key, namespace=namespace, setup=loaded, load="ok")
        if loaded == "ok":
            state["load"] = _harness_call(lambda: exec(code, namespace), timeout_s)
    if state["setup"] != "ok":
        return {"setup_error": True}
    if state["load"] != "ok":
        return {"passed": False, "timed_out": state["load"] == "timeout"}
    namespace = state["namespace"]
    if entry_point is None:
        status = _harness_call(lambda: exec(test, namespace), timeout_s)
    else:
        status = _harness_call(
            lambda: (exec(test, namespace), namespace["check"](namespace[entry_point])), timeout_s
        )
    return {"passed": status == "ok", "timed_out": status == "timeout"}


def _harness_source() -> str:
    # The harness is ordinary (linted, typed) code here; the sandbox gets its source text.
    parts = [inspect.getsource(fn) for fn in (_harness_call, _run_test)]
    return (
        "from __future__ import annotations\n\nfrom typing import Any, Callable\n\n\n"
        + "\n\n".join(parts)
    )


GRADER_TYPES: dict[str, Callable[[Mapping[str, Any], SpecContext], Grader]] = {
    "python": build_python_grader,
    "code": build_code_grader,
}
