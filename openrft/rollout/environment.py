"""Environments: what answers an episode's assistant turns.

A user's environment is plain Python with no openrft import (`env.environment =
"file.py:make_env"`): `make_env(item)` gets the dataset row as reward functions see it and
returns an object with

    reset() -> list[dict]                  optional: the opening messages (default: the row's)
    step(assistant_message: dict) -> dict  {"messages": [...], "reward": float | None,
                                            "done": bool, "metrics": {name: float}}

each sync or async. Messages are OpenAI chat dicts; the assistant message carries
`tool_calls` when the model called tools. docs/agentic.md has a complete example.

`ToolEnvironment` is the built-in environment of `env.tools`: it runs the calls of each turn
and ends the episode at the first turn without calls (the model's answer).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from openrft.errors import ConfigError
from openrft.rollout.tool_calls import ParsedTurn, ToolCall
from openrft.rollout.tools import ToolBox, import_user_file


@dataclass(frozen=True)
class StepResult:
    """What an environment answered to one assistant turn, checked."""

    messages: tuple[dict[str, Any], ...] = ()  # appended before the next assistant turn
    reward: float | None = None  # this turn's reward, if the environment gives one
    done: bool = False
    metrics: Mapping[str, float] = field(default_factory=dict)
    tool_calls: int = 0  # calls run this turn (ToolEnvironment)
    tool_errors: Mapping[str, int] = field(default_factory=dict)  # by kind (ToolEnvironment)


class EnvironmentFailure(Exception):
    """The environment broke its contract or raised: the episode cannot go on."""


def check_step(answer: Any, where: str) -> StepResult:
    """A user's step() answer as a StepResult, or EnvironmentFailure naming what is wrong."""
    if not isinstance(answer, Mapping):
        raise EnvironmentFailure(f"{where} returned {type(answer).__name__}, not a dict")
    unknown = set(answer) - {"messages", "reward", "done", "metrics"}
    if unknown:
        raise EnvironmentFailure(f"{where} returned unknown keys {sorted(unknown)}")
    messages = answer.get("messages") or []
    if not isinstance(messages, list | tuple):
        raise EnvironmentFailure(f"{where}: 'messages' must be a list of message dicts")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise EnvironmentFailure(f"{where}: messages[{index}] needs a 'role' string")
        if message["role"] == "assistant":
            raise EnvironmentFailure(
                f"{where}: messages[{index}] is an assistant turn; only the model writes those"
            )
        if not isinstance(message.get("content", ""), str):
            raise EnvironmentFailure(f"{where}: messages[{index}].content must be a string")
    reward = answer.get("reward")
    if reward is not None:
        if isinstance(reward, bool) or not isinstance(reward, int | float):
            raise EnvironmentFailure(f"{where}: 'reward' must be a number or None")
        if not math.isfinite(reward):
            raise EnvironmentFailure(f"{where}: 'reward' is {reward}")
    done = answer.get("done", False)
    if not isinstance(done, bool):
        raise EnvironmentFailure(f"{where}: 'done' must be true or false")
    metrics = answer.get("metrics") or {}
    if not isinstance(metrics, Mapping) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values()
    ):
        raise EnvironmentFailure(f"{where}: 'metrics' must map names to numbers")
    return StepResult(
        tuple(dict(m) for m in messages),
        None if reward is None else float(reward),
        done,
        {str(k): float(v) for k, v in metrics.items()},
    )


class Runner:
    """Runs environment code off the decoding thread: sync code on a thread pool, async code
    on one event loop in its own thread; both bounded by `max_concurrent`."""

    def __init__(self, max_concurrent: int):
        self.pool = ThreadPoolExecutor(max_concurrent, thread_name_prefix="openrft-env")
        self.loop = asyncio.new_event_loop()
        self.loop_thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.max_concurrent = max_concurrent

    def submit(self, function: Callable[[], Any]) -> Future:
        """Run `function()` (whose result may be awaitable) and resolve to its result."""
        outer: Future = Future()

        def run() -> None:
            try:
                result = function()
            except BaseException as error:  # delivered to whoever waits on the future
                outer.set_exception(error)
                return
            if not inspect.isawaitable(result):
                outer.set_result(result)
                return
            inner = asyncio.run_coroutine_threadsafe(_awaited(result), self._event_loop())
            inner.add_done_callback(lambda done: _copy_outcome(done, outer))

        self.pool.submit(run)
        return outer

    def wait(self, awaitable: Any) -> Any:
        """Await `awaitable` on the runner's event loop from a worker thread."""
        return asyncio.run_coroutine_threadsafe(_awaited(awaitable), self._event_loop()).result()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self.lock:
            if self.loop_thread is None:
                self.loop_thread = threading.Thread(target=self.loop.run_forever, daemon=True)
                self.loop_thread.start()
        return self.loop

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.loop_thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _copy_outcome(source: Future, target: Future) -> None:
    if source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())


class UserEnvironment:
    """A user's environment object behind the adapter the episode runner uses."""

    def __init__(self, env: Any, where: str):
        if not callable(getattr(env, "step", None)):
            raise ConfigError("env.environment", f"{where} returned an object without step()")
        self.env = env
        self.where = where

    def reset(self) -> Any:
        """The opening messages (a list, an awaitable of one, or None: the row's own)."""
        reset = getattr(self.env, "reset", None)
        return reset() if callable(reset) else None

    def step(self, turn: ParsedTurn) -> Any:
        return self.env.step(turn.message())

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if callable(close):
            close()


class ToolEnvironment:
    """Runs each turn's tool calls and answers with one tool message per call; the first
    turn without calls ends the episode."""

    def __init__(self, tools: ToolBox, row_tools: Sequence[dict[str, Any]] = ()):
        self.tools = tools
        self.row_schemas = {
            t["function"]["name"]: t for t in row_tools if isinstance(t.get("function"), dict)
        }

    def reset(self) -> None:
        return None

    def step(self, turn: ParsedTurn) -> StepResult:
        if not turn.wants_tools:
            return StepResult(done=True)
        messages, errors = [], {}
        for call in (*turn.calls, *turn.malformed):
            result = self.tools.call(call, self.row_schemas)
            message = {"role": "tool", "content": result.content}
            if isinstance(call, ToolCall):  # a malformed call has no id to answer
                message |= {"tool_call_id": call.id, "name": call.name}
            messages.append(message)
            if result.error:
                errors[result.error] = errors.get(result.error, 0) + 1
        calls = len(turn.calls) + len(turn.malformed)
        return StepResult(tuple(messages), tool_calls=calls, tool_errors=errors)

    def close(self) -> None:
        """The tool box outlives the episode."""


def load_environment_factory(
    reference: str, field: str = "env.environment", example: str = "file.py:make_env"
) -> Callable[..., Any]:
    """`file.py:function` or `module:function` -> the function (an environment factory, or
    an agent); errors name `field`."""
    path, _, name = reference.rpartition(":")
    if not path or not name:
        raise ConfigError(field, f"{reference!r}: use {example}")
    if path.endswith(".py"):
        module = import_user_file(path, field)
    else:
        try:
            module = importlib.import_module(path)
        except ImportError as error:
            raise ConfigError(field, f"cannot import {path}: {error}") from error
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ConfigError(field, f"{path} has no function {name!r}")
    return factory
