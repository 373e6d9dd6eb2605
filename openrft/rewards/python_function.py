"""A grader that calls a user's Python reward function, per sample or per batch.

The call form is read off the function's first parameter:
- `reward(response: str, item: dict)`: openrft's form, once per sample (any other name);
- `grade(sample: dict, item: dict)`: OpenAI's python-grader form, once per sample; `sample` has
  `output_text`, `output_json` (the parsed reply, or None), `output_tools` and `choices`;
- `reward(responses: list[str], items: list[dict])` and `grade(samples: list[dict], items)`:
  the batch forms, called once per batch, returning one result per sample in order.

Owns loading `path/to/file.py:function` or `package.module:function` references and running
each call under a wall-clock timeout, turning exceptions, hangs and bad return values into
typed `GradeError`s. The function runs in this process: it is trusted code, not a sandbox.
"""

from __future__ import annotations

import asyncio
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

from openrft.errors import GraderError
from openrft.rewards.grader import clip_message, to_grade
from openrft.rewards.templating import openai_sample
from openrft.types import Grade, Sample
from openrft.user_code import UserFileError, import_file

REFERENCE_SYNTAX = "'path/to/file.py:function' or 'package.module:function'"
# First parameter name -> (call form, batched). Any other name is openrft's (response, item).
CALL_FORMS = {
    "sample": ("openai", False),
    "responses": ("response", True),
    "samples": ("openai", True),
}


class PythonFunctionGrader:
    """Grades with `fn(response: str, item: dict) -> float | dict[str, float]` (sync or async).

    Each call runs in its own daemon thread joined with `timeout_s`. A call that overruns is
    reported as a timeout and abandoned: Python cannot kill a thread, so a stuck call keeps
    running in the background (daemon, so it never blocks interpreter exit). Hard kills
    (CPU loops, memory blow-ups) need the sandboxed subprocess grader of the grader library.
    """

    def __init__(self, reference: str, timeout_s: float = 60.0):
        if not timeout_s > 0:
            raise GraderError(f"timeout_s must be > 0, got {timeout_s} (reference {reference!r})")
        self.reference = reference
        self.timeout_s = float(timeout_s)
        self.fn = load_function(reference)
        self.name = reference.strip().rpartition(":")[2].rpartition(".")[2]
        self.form, self.batched = call_form(self.fn)

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        if self.batched:
            return self._grade_batch(samples) if samples else []
        # One sample at a time: user functions are rarely thread-safe, and a timeout must
        # only cost the sample that caused it.
        return [self._grade_one(sample) for sample in samples]

    def _arguments(self, samples: Sequence[Sample]) -> tuple[list[object], list[dict]]:
        first = [openai_sample(s) if self.form == "openai" else s.response for s in samples]
        return first, [s.item() for s in samples]

    def _grade_batch(self, samples: Sequence[Sample]) -> list[Grade]:
        """One call for the batch, with `timeout_s` per sample; a failed call fails them all."""
        start = time.perf_counter()
        timeout_s = self.timeout_s * len(samples)
        done, result, error = _call_with_timeout(self.fn, self._arguments(samples), timeout_s)
        latency = (time.perf_counter() - start) / len(samples)
        if not done:
            message = f"{self.name} did not return within {timeout_s:g} s for a batch"
            return [Grade.failed("timeout", f"{message} of {len(samples)}", latency)] * len(samples)
        if error is not None:
            return [Grade.failed("runtime_error", describe_exception(error), latency)] * len(
                samples
            )
        if not isinstance(result, list | tuple) or len(result) != len(samples):
            got = f"{len(result)} results" if isinstance(result, list | tuple) else repr(result)
            message = clip_message(
                f"{self.name} must return a list of {len(samples)} results (one per sample), "
                f"got {got}"
            )
            return [Grade.failed("invalid_output", message, latency)] * len(samples)
        return [to_grade(value, self.name, latency) for value in result]

    def _grade_one(self, sample: Sample) -> Grade:
        start = time.perf_counter()
        first, items = self._arguments([sample])
        done, result, error = _call_with_timeout(self.fn, (first[0], items[0]), self.timeout_s)
        latency = time.perf_counter() - start
        if not done:
            message = (
                f"{self.name} did not return within {self.timeout_s:g} s on sample {sample.id}"
            )
            return Grade.failed("timeout", message, latency)
        if error is not None:
            return Grade.failed("runtime_error", describe_exception(error), latency)
        return to_grade(result, self.name, latency)


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


def _call_with_timeout(
    fn: Callable[..., object], arguments: tuple[object, object], timeout_s: float
) -> tuple[bool, object, BaseException | None]:
    """Runs `fn(*arguments)` in a daemon thread; returns (finished, result, exception)."""
    outcome: list[tuple[object, BaseException | None]] = []

    def target() -> None:
        try:
            result = fn(*arguments)
            if inspect.isawaitable(result):  # an `async def` reward, or one returning a coroutine
                result = asyncio.run(_wait(result))
            outcome.append((result, None))
        except BaseException as exc:  # SystemExit in a thread would vanish silently otherwise
            outcome.append((None, exc))

    thread = threading.Thread(
        target=target, name=f"reward-{getattr(fn, '__name__', 'fn')}", daemon=True
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
