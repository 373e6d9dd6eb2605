"""Environments: what answers an episode's assistant turns.

A user's environment is plain Python with no openrft import (`env.environment =
"file.py:make_env"`): `make_env(item)` gets the dataset row as reward functions see it and
returns an object with

    reset() -> list[dict]                  optional: the opening messages (default: the row's)
    step(assistant_message: dict) -> dict  {"messages": [...], "reward": float | None,
                                            "done": bool, "metrics": {name: float}}

each sync or async. Messages are OpenAI chat dicts; the assistant message carries
`tool_calls` when the model called tools. docs/agentic.md has a complete example.

Where a user's environment runs (`env.isolation`, see `user_environments`): by default each
episode's environment lives in a worker process (`EnvironmentWorkers`, one episode at a
time per worker, workers kept warm across episodes), so a step that hangs or spins is stopped
by killing its worker at the episode's time limit, and a crash costs that episode alone;
`"thread"` runs it in the trainer's process, where a step past its time is abandoned.

`ToolEnvironment` is the built-in environment of `env.tools`: it runs the calls of each turn
and ends the episode at the first turn without calls (the model's answer).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import math
import os
import sys
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from openrft.errors import ConfigError
from openrft.rollout.env_worker import BOOT
from openrft.rollout.tool_calls import ParsedTurn, ToolCall
from openrft.rollout.tool_worker import error_location
from openrft.rollout.tools import ToolBox, import_user_file
from openrft.rollout.workers import WorkerProcess

# "process": each episode's environment in a worker process, killed when a step overruns.
# "thread": in this process, where a step past its time is abandoned, not stopped.
ISOLATIONS = ("process", "thread")
THREAD_OPT_IN = (
    'to run it in the trainer\'s process instead, set env.isolation = "thread" '
    "(docs/agentic.md); a step past the episode's time is then abandoned, not stopped"
)
WORKER_START_S = 300.0  # a worker's import of the environment file
CLOSE_TIMEOUT_S = 30.0  # an environment's close(); then its worker is killed


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


class WorkerFailure(EnvironmentFailure):
    """An environment worker's answer: the message already says what raised, and where."""


class EnvironmentTimeout(WorkerFailure):
    """A call to an environment worker overran its bound; the worker was killed."""


def describe_step_error(error: BaseException) -> str:
    """The episode's error for an exception out of step(): "step() raised ValueError('x')
    (line 12 of my_env.py)"; a worker's or service's failure as it reads."""
    if isinstance(error, WorkerFailure):
        return str(error)
    if isinstance(error, EnvironmentFailure):
        return f"step() raised {error!r}"
    return f"step() raised {error!r}{error_location(error)}"


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


# -- where a user's environment runs ----------------------------------------------------------


def user_environments(
    reference: str,
    isolation: str = "process",
    timeout_s: float = 600.0,
    where: str | None = None,
) -> InProcessEnvironments | EnvironmentWorkers:
    """What makes a job's environments from `reference` (`file.py:make_env` or
    `module:make_env`): `.make(item)` gives one episode's environment adapter, `.close()`
    ends them all. `timeout_s` bounds each call to a worker (the episode's limit);
    `where` names the environment in errors (env.environment as configured)."""
    if isolation not in ISOLATIONS:
        raise ConfigError("env.isolation", f"{isolation!r}: use one of {', '.join(ISOLATIONS)}")
    if isolation == "thread":
        return InProcessEnvironments(load_environment_factory(reference), where or reference)
    return EnvironmentWorkers(reference, timeout_s, where or reference)


class InProcessEnvironments:
    """`env.isolation = "thread"`: environments are objects in this process."""

    def __init__(self, factory: Callable[..., Any], where: str):
        self.factory, self.where = factory, where

    def make(self, item: dict[str, Any]) -> UserEnvironment:
        return UserEnvironment(self.factory(item), self.where)

    def close(self) -> None:
        """Nothing to stop: a step still running in a thread cannot be."""


class EnvironmentWorkers:
    """`env.isolation = "process"`: each episode's environment lives in a worker process
    (openrft/rollout/env_worker.py) from make_env to close(), one episode per worker. A worker
    is started when no idle one is left (so there are as many as episodes live at once) and
    kept, warm, for later episodes; one that was killed or died is dropped, and a fresh one
    starts when next needed. Thread-safe."""

    def __init__(self, reference: str, timeout_s: float, where: str):
        self.reference, self.timeout_s, self.where = reference, timeout_s, where
        self.cwd = os.getcwd()  # workers import the file from where the job was built
        self.path = list(sys.path)
        self._lock = threading.Lock()
        self._idle: list[WorkerProcess] = []
        self._workers: set[WorkerProcess] = set()
        self._closed = False
        self._finalizer = weakref.finalize(self, _kill_workers, self._workers)
        first = self._start()
        ready = first.await_ready(WORKER_START_S)
        if not ready.get("ok"):
            self.close()
            load_environment_factory(reference)  # fails here too: that error says why
            raise ConfigError(
                "env.environment",
                f"{where} loads in this process but not in a worker process "
                f"({ready.get('message')}); {THREAD_OPT_IN}",
            )
        self._idle.append(first)

    def make(self, item: dict[str, Any]) -> WorkerEnvironment:
        """An episode's environment, made by make_env(item) in a worker; EnvironmentFailure
        (the worker free again) if that raised."""
        try:
            encoded = json.loads(json.dumps(item))
        except (TypeError, ValueError) as error:
            raise EnvironmentFailure(
                f"the row cannot be sent to an environment worker as JSON ({error}); "
                f"{THREAD_OPT_IN}"
            ) from error
        env = WorkerEnvironment(self, self._take())
        try:
            env.call({"op": "make", "item": encoded}, "make_env", self.timeout_s)
        except BaseException:
            env.close()
            raise
        return env

    def pids(self) -> list[int]:
        """The workers' process ids (idle and busy)."""
        with self._lock:
            return [worker.process.pid for worker in self._workers]

    def close(self) -> None:
        """Kills every worker; safe to call twice."""
        with self._lock:
            self._closed = True
            self._idle.clear()
        self._finalizer()

    def _take(self) -> WorkerProcess:
        with self._lock:
            if self._closed:
                raise EnvironmentFailure("the job's environment workers are closed")
            if self._idle:
                return self._idle.pop()
        worker = self._start()
        ready = worker.await_ready(WORKER_START_S)
        if not ready.get("ok"):
            self._give_back(worker)
            raise EnvironmentFailure(f"an environment worker could not start: {ready['message']}")
        return worker

    def _start(self) -> WorkerProcess:
        config = {
            "path": self.path,
            "parent": os.getpid(),
            "reference": self.reference,
            "where": self.where,
        }
        worker = WorkerProcess([sys.executable, "-c", BOOT, json.dumps(config)], cwd=self.cwd)
        with self._lock:
            self._workers.add(worker)
            if self._closed:  # close() raced with this start
                worker.signal_kill()
        return worker

    def _give_back(self, worker: WorkerProcess) -> None:
        """A worker whose episode is over: kept if it lives and holds no environment."""
        with self._lock:
            if worker.alive() and worker.ready is not None and not self._closed:
                self._idle.append(worker)
                return
            self._workers.discard(worker)
        worker.kill()


def _kill_workers(workers: set[WorkerProcess]) -> None:
    for worker in list(workers):
        worker.kill()
    workers.clear()


class WorkerEnvironment:
    """One episode's environment in a worker: the adapter the episode runner uses. Calls come
    from one thread at a time; `stop()` (the episode's deadline) from any."""

    def __init__(self, pool: EnvironmentWorkers, worker: WorkerProcess):
        self.pool, self.worker = pool, worker
        self.lock = threading.Lock()
        self.closed = False

    def reset(self) -> Any:
        return self.call({"op": "reset"}, "reset()", self.pool.timeout_s)

    def step(self, turn: ParsedTurn) -> Any:
        return self.call({"op": "step", "message": turn.message()}, "step()", self.pool.timeout_s)

    def stop(self) -> None:
        """The episode is over while a call runs: kill the worker (its thread then returns)."""
        self.worker.signal_kill()

    def close(self) -> None:
        """close() in the worker (if it still lives), and the worker back to the pool."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            if self.worker.alive():
                answer = self.worker.request(
                    {"op": "close"}, min(self.pool.timeout_s, CLOSE_TIMEOUT_S)
                )
                if not answer.get("ok"):
                    self.worker.kill()  # a worker whose environment may live on is not reused
        self.pool._give_back(self.worker)

    def call(self, request: dict[str, Any], what: str, timeout_s: float) -> Any:
        with self.lock:
            if self.closed:
                raise EnvironmentFailure(f"{what} after the episode's environment was closed")
            answer = self.worker.request(request, timeout_s)
        if answer.get("ok"):
            return answer.get("value")
        kind, message = answer.get("kind"), answer.get("message", "")
        if kind == "timeout":
            raise EnvironmentTimeout(f"{what} did not return within {timeout_s:g} s (stopped)")
        if kind == "crashed":
            raise WorkerFailure(f"{what} crashed the environment's process: {message}")
        if kind == "env_error":
            raise WorkerFailure(message)
        raise WorkerFailure(f"{what}: {message}")
