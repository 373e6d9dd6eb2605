"""A grader that calls a user's Python reward function, per sample or per batch.

The call form is read off the function's first parameter:
- `reward(response: str, item: dict)`: openrft's form, once per sample (any other name);
- `grade(sample: dict, item: dict)`: OpenAI's python-grader form, once per sample; `sample` has
  `output_text`, `output_json` (the parsed reply, or None), `output_tools` and `choices`;
- `reward(responses: list[str], items: list[dict])` and `grade(samples: list[dict], items)`:
  the batch forms, called once per batch, returning one result per sample in order.

Owns loading `path/to/file.py:function` or `package.module:function` references and running
each call under a wall-clock timeout, turning exceptions, hangs, crashes and bad return values
into typed `GradeError`s. By default the function runs in a worker process
(`openrft.rewards.worker_pool`), killed and restarted when a call overruns; `isolation =
"thread"` runs it in this process instead. It is trusted code either way, not a sandbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import importlib.util
import inspect
import math
import os
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from openrft.errors import GraderError
from openrft.rewards.grader import clip_message, to_grade
from openrft.rewards.templating import openai_sample
from openrft.rewards.worker_pool import Outcome, WorkerPool, WorkerSetupError
from openrft.types import Grade, Sample
from openrft.user_code import UserFileError, import_file

REFERENCE_SYNTAX = "'path/to/file.py:function' or 'package.module:function'"
# First parameter name -> (call form, batched). Any other name is openrft's (response, item).
CALL_FORMS = {
    "sample": ("openai", False),
    "responses": ("response", True),
    "samples": ("openai", True),
}
# "process": a worker process, killed on a timeout. "thread": this process, where a timed-out
# call is abandoned (for functions that only exist here: a lambda or closure made at runtime).
ISOLATIONS = ("process", "thread")
THREAD_OPT_IN = (
    'to run it in this process, use a python_function grader table with isolation = "thread" '
    "(docs/rewards.md); a timeout then abandons the call instead of stopping it"
)


class PythonFunctionGrader:
    """Grades with `fn(response: str, item: dict) -> float | dict[str, float]` (sync or async).

    isolation="process" (the default): the function is imported in one worker process and
    called there, one sample (or one batch) at a time. A call past `timeout_s` is a timeout,
    and the worker is killed and restarted, so the hung call stops; a worker that dies
    (segfault, `os._exit`, out of memory) costs its sample a runtime_error. `close()` ends it.

    isolation="thread": each call runs in a daemon thread of this process, joined with
    `timeout_s`; a call that overruns is abandoned, not stopped (Python cannot kill a thread).
    """

    def __init__(self, reference: str, timeout_s: float = 60.0, isolation: str = "process"):
        if not timeout_s > 0:
            raise GraderError(f"timeout_s must be > 0, got {timeout_s} (reference {reference!r})")
        if isolation not in ISOLATIONS:
            raise GraderError(
                f"isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r} "
                f"(reference {reference!r})"
            )
        self.reference, self.isolation = reference, isolation
        self.timeout_s = float(timeout_s)
        self.name = reference.strip().rpartition(":")[2].rpartition(".")[2]
        self.fn: Callable[..., object] | None = None  # loaded here with isolation="thread" only
        self._pool: WorkerPool | None = None
        self._generation = 0  # bumped by interrupt(): the grade call in progress stops
        if isolation == "thread":
            self.fn = load_function(reference)
            self.form, self.batched = call_form(self.fn)
        else:
            self._pool, (self.form, self.batched) = _start_workers(reference)

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        if not samples:
            return []
        if self._pool is not None:
            return self._grade_in_workers(samples)
        if self.batched:
            return self._grade_batch(samples)
        # One sample at a time: user functions are rarely thread-safe, and a timeout must
        # only cost the sample that caused it.
        generation = self._generation
        return [
            self._grade_one(s) if generation == self._generation else self._stopped(s)
            for s in samples
        ]

    def interrupt(self) -> None:
        """Stops the grade call in progress (a batch time limit passed): no further sample of
        it starts, and with process isolation the call running now is killed."""
        self._generation += 1
        if self._pool is not None:
            self._pool.interrupt()

    def close(self) -> None:
        """Stops the worker process (process isolation); grading afterwards fails."""
        if self._pool is not None:
            self._pool.close()

    def _arguments(self, samples: Sequence[Sample]) -> tuple[list[object], list[dict]]:
        first = [openai_sample(s) if self.form == "openai" else s.response for s in samples]
        return first, [s.item() for s in samples]

    # --- process isolation --------------------------------------------------------------------

    def _grade_in_workers(self, samples: Sequence[Sample]) -> list[Grade]:
        assert self._pool is not None
        generation = self._pool.generation
        first, items = self._arguments(samples)
        if self.batched:  # one request for the batch, with timeout_s per sample
            timeout_s = self.timeout_s * len(samples)
            [outcome] = self._pool.map([(self.name, first, items)], timeout_s, generation)
            return self._batch_outcome(outcome, samples, timeout_s)
        requests = [(self.name, [f], [i]) for f, i in zip(first, items, strict=True)]
        outcomes = self._pool.map(requests, self.timeout_s, generation)
        return [
            self._outcome_grades(o, [s], f"on sample {s.id}")[0]
            for o, s in zip(outcomes, samples, strict=True)
        ]

    def _batch_outcome(
        self, outcome: Outcome, samples: Sequence[Sample], timeout_s: float
    ) -> list[Grade]:
        if outcome.status == "timeout":
            message = f"{self.name} did not return within {timeout_s:g} s for a batch"
            latency = outcome.elapsed_s / len(samples)
            return [Grade.failed("timeout", f"{message} of {len(samples)}", latency)] * len(samples)
        return self._outcome_grades(outcome, samples, f"on a batch of {len(samples)}")

    def _outcome_grades(
        self, outcome: Outcome, samples: Sequence[Sample], where: str
    ) -> list[Grade]:
        latency = outcome.elapsed_s / len(samples)
        if outcome.status == "ok":
            return [dataclasses.replace(g, latency_s=latency) for g in outcome.value]
        if outcome.status == "timeout":  # per sample: one sample per request
            message = f"{self.name} did not return within {self.timeout_s:g} s {where}"
            return [Grade.failed("timeout", message, latency)]
        if outcome.status == "cancelled":
            return [self._stopped(sample) for sample in samples]
        if outcome.status == "crashed":
            message = f"{self.name} crashed {where}: {outcome.value}; the worker was restarted"
        else:  # "error": the reply could not be sent back (an unpicklable value)
            message = f"{self.name} {where}: {outcome.value}"
        return [Grade.failed("runtime_error", clip_message(message), latency)] * len(samples)

    def _stopped(self, sample: Sample) -> Grade:
        message = f"{self.name}: grading stopped before sample {sample.id} (interrupted)"
        return Grade.failed("timeout", message)

    # --- thread isolation ---------------------------------------------------------------------

    def _grade_batch(self, samples: Sequence[Sample]) -> list[Grade]:
        """One call for the batch, with `timeout_s` per sample; a failed call fails them all."""
        assert self.fn is not None
        start = time.perf_counter()
        timeout_s = self.timeout_s * len(samples)
        first, items = self._arguments(samples)
        done, result, error = _call_with_timeout(self.fn, (first, items), timeout_s)
        latency = (time.perf_counter() - start) / len(samples)
        if not done:
            message = f"{self.name} did not return within {timeout_s:g} s for a batch"
            return [Grade.failed("timeout", f"{message} of {len(samples)}", latency)] * len(samples)
        grades = grades_from_call(self.name, result, error, len(samples), batched=True)
        return [dataclasses.replace(g, latency_s=latency) for g in grades]

    def _grade_one(self, sample: Sample) -> Grade:
        assert self.fn is not None
        start = time.perf_counter()
        first, items = self._arguments([sample])
        done, result, error = _call_with_timeout(self.fn, (first[0], items[0]), self.timeout_s)
        latency = time.perf_counter() - start
        if not done:
            message = (
                f"{self.name} did not return within {self.timeout_s:g} s on sample {sample.id}"
            )
            return Grade.failed("timeout", message, latency)
        [grade] = grades_from_call(self.name, result, error, 1, batched=False)
        return dataclasses.replace(grade, latency_s=latency)


def _start_workers(reference: str) -> tuple[WorkerPool, tuple[str, bool]]:
    """A started one-worker pool for `reference`, and the function's (form, batched)."""
    pool = WorkerPool(
        "openrft.rewards.python_function:worker_setup", [reference], name=f"reward {reference}"
    )
    try:
        form, batched = pool.start()
    except WorkerSetupError as exc:
        load_function(reference)  # fails here too: raises the GraderError that says why
        raise GraderError(
            f"reward function {reference!r} loads in this process but not in a worker "
            f"process ({exc}); {THREAD_OPT_IN}"
        ) from exc
    return pool, (form, batched)


def worker_setup(reference: str) -> tuple[Callable[[Any], list[Grade]], tuple[str, bool]]:
    """Runs in the worker process (see WorkerPool): loads the function once and returns the
    handler for `(name, firsts, items)` requests, whose grades carry no latency yet."""
    fn = load_function(reference)
    form, batched = call_form(fn)

    def handle(request: tuple[str, list[object], list[dict]]) -> list[Grade]:
        name, first, items = request
        arguments = (first, items) if batched else (first[0], items[0])
        result, error = _call(fn, arguments)
        return grades_from_call(name, result, error, len(first), batched)

    return handle, (form, batched)


def grades_from_call(
    name: str, result: object, error: BaseException | None, count: int, batched: bool
) -> list[Grade]:
    """The grades for one call's result (or exception): one, or `count` for a batch call."""
    if error is not None:
        return [Grade.failed("runtime_error", describe_exception(error))] * count
    if not batched:
        return [to_grade(result, name, 0.0)]
    if not isinstance(result, list | tuple) or len(result) != count:
        got = f"{len(result)} results" if isinstance(result, list | tuple) else repr(result)
        message = clip_message(
            f"{name} must return a list of {count} results (one per sample), got {got}"
        )
        return [Grade.failed("invalid_output", message)] * count
    return [to_grade(value, name, 0.0) for value in result]


def describe_exception(exc: BaseException) -> str:
    """`"Type: message (at file.py:line)"`, naming the innermost frame, where it went wrong."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return clip_message(f"{type(exc).__name__}: {exc}{where}")


async def _wait(awaitable: Awaitable[object]) -> object:
    return await awaitable


def call_form(fn: Callable[..., object]) -> tuple[str, bool]:
    """(form, batched) for a reward function, from its first parameter's name (CALL_FORMS)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return "response", False
    first = parameters[0].name if parameters else ""
    return CALL_FORMS.get(first, ("response", False))


def _call(
    fn: Callable[..., object], arguments: tuple[object, object]
) -> tuple[object, BaseException | None]:
    """(result, None), or (None, the exception); an `async def` reward is run to completion."""
    try:
        result = fn(*arguments)
        if inspect.isawaitable(result):  # an `async def` reward, or one returning a coroutine
            result = asyncio.run(_wait(result))
        return result, None
    except BaseException as exc:  # SystemExit would end the thread or worker silently otherwise
        return None, exc


def _call_with_timeout(
    fn: Callable[..., object], arguments: tuple[object, object], timeout_s: float
) -> tuple[bool, object, BaseException | None]:
    """Runs `fn(*arguments)` in a daemon thread; returns (finished, result, exception)."""
    outcome: list[tuple[object, BaseException | None]] = []
    thread = threading.Thread(
        target=lambda: outcome.append(_call(fn, arguments)),
        name=f"reward-{getattr(fn, '__name__', 'fn')}",
        daemon=True,
    )
    thread.start()
    thread.join(None if math.isinf(timeout_s) else timeout_s)  # join(inf) overflows
    if not outcome:  # checked instead of is_alive(): the thread may be exiting after appending
        return False, None, None
    result, error = outcome[0]
    return True, result, error


def load_function(reference: str) -> Callable[..., object]:
    """Resolves a reference to a callable; raises GraderError naming the reason and reference."""
    target, sep, attr_path = reference.strip().rpartition(":")
    if not sep or not target or not attr_path:
        raise GraderError(f"bad reward reference {reference!r}: expected {REFERENCE_SYNTAX}")
    if _looks_like_file(target):
        module = _load_file(Path(target), reference)
    else:
        module = _import_module(target, reference)
    obj: object = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise GraderError(
                f"cannot load reward function {reference!r}: {target!r} has no attribute {part!r}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise GraderError(
            f"cannot load reward function {reference!r}: {attr_path!r} is a "
            f"{type(obj).__name__}, not a function"
        )
    return obj


def _looks_like_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _load_file(path: Path, reference: str) -> ModuleType:
    try:
        return import_file(path, "_openrft_reward")
    except UserFileError as exc:
        cause = f": {describe_exception(exc.cause)}" if exc.cause is not None else ""
        message = f"cannot load reward function {reference!r}: {exc.problem}{cause}"
        raise GraderError(message) from exc.cause


def _import_module(name: str, reference: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise GraderError(
                f"cannot load reward function {reference!r}: no module named {exc.name!r} "
                "(is it installed, or on PYTHONPATH?)"
            ) from exc
        raise GraderError(
            f"cannot load reward function {reference!r}: importing {name!r} failed: "
            f"{describe_exception(exc)}"
        ) from exc
    except (Exception, SystemExit) as exc:
        raise GraderError(
            f"cannot load reward function {reference!r}: importing {name!r} failed: "
            f"{describe_exception(exc)}"
        ) from exc
