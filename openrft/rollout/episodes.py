"""Multi-turn episodes: the model and an environment (or its tools) take turns.

`run_episodes` is the rollout of an agentic job. For each prompt it makes G environments,
asks the engine for G episodes, and answers each finished assistant turn through the
engine's `respond` callback: the turn's tool calls are parsed, the environment's step runs on
a worker thread (while other episodes keep decoding; a user's environment itself lives in a
worker process, openrft.rollout.environment.EnvironmentWorkers), its messages are rendered by the
bridge (openrft.rollout.bridge: only the new tokens, never the history again) and handed back
as the tokens to continue with. The in-process engine keeps each episode's KV cache across
turns; an engine without that (vLLM) runs each turn as a token-id prompt of the whole
history (`generate_by_reprefill`).

An episode ends when the environment says done (finish "stop"), at `env.max_turns` assistant
turns ("max_turns"), when a turn hits its token cap or the episode its token budget
("length"), at its wall-clock limit ("timeout"), or when the environment fails ("error":
left out of the update and counted, never a silent reward of 0).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from openrft.rollout.bridge import ChatBridge
from openrft.rollout.engine import raw_turn_text
from openrft.rollout.environment import (
    EnvironmentFailure,
    EnvironmentTimeout,
    Runner,
    StepResult,
    check_step,
    describe_step_error,
)
from openrft.rollout.tool_calls import ParsedTurn, ToolCallParser
from openrft.types import Completion, Example, FinishReason, SamplingParams, Segment


@dataclass(frozen=True)
class Continuation:
    """What an episode continues with after a turn: the tokens to append (the environment's
    messages and the next assistant opening, as the bridge renders them) and the next turn's
    token cap."""

    token_ids: tuple[int, ...]
    max_new_tokens: int


# The engine calls respond(episode index, the turn just sampled) when an episode's turn ends
# and later waits on the future: a Continuation, or None when the episode is over.
Respond = Callable[[int, Completion], "Future[Continuation | None]"]


class EpisodeEngine(Protocol):
    def generate_episodes(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, respond: Respond
    ) -> None:
        """`params.n` episodes per prompt (episode i of prompt p is p * n + i)."""
        ...


@dataclass(frozen=True)
class Turn:
    """One assistant turn and what the environment answered."""

    completion: Completion  # the sampled tokens of this turn
    message: dict[str, Any]  # the assistant message (content, tool_calls)
    env_messages: tuple[dict[str, Any], ...] = ()  # the environment's answer
    env_token_ids: tuple[int, ...] = ()  # its tokens as appended (empty after the last turn)
    reward: float | None = None  # the environment's reward for this turn
    tool_calls: int = 0
    tool_errors: Mapping[str, int] = field(default_factory=dict)  # by kind
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Episode:
    opening: tuple[dict[str, Any], ...]  # the messages the episode started from
    turns: tuple[Turn, ...]
    finish_reason: FinishReason
    error: str | None = None  # why the environment failed (finish "error")
    env_s: float = 0.0  # time in the environment's reset and steps
    prompt_token_ids: tuple[int, ...] = ()  # the rendered opening the episode started from
    # An agent's episode (openrft.rollout.agents): what its function returned (the reward,
    # graded in openrft.train.episodes), and its calls that did not extend this one's
    # tokens (the agent rewrote its history), each trained as a row of its own.
    outcome: Any = None
    branches: tuple[Episode, ...] = ()

    def messages(self) -> list[dict[str, Any]]:
        """The whole conversation in OpenAI shape: the opening, then every assistant turn
        and the environment's messages after it."""
        messages = [dict(m) for m in self.opening]
        for turn in self.turns:
            messages.append(dict(turn.message))
            messages.extend(dict(m) for m in turn.env_messages)
        return messages

    def segments(self) -> tuple[Segment, ...]:
        """The tokens after the prompt: each turn's sampled tokens, then the environment's."""
        segments = []
        for turn in self.turns:
            c = turn.completion
            segments.append(Segment(c.token_ids, sampled=True, logprobs=c.logprobs))
            if turn.env_token_ids:
                segments.append(Segment(turn.env_token_ids, sampled=False))
        return tuple(segments)

    @property
    def sampled_tokens(self) -> int:
        return sum(len(t.completion.token_ids) for t in self.turns)

    @property
    def tool_calls(self) -> int:
        return sum(t.tool_calls for t in self.turns)

    def env_metrics(self) -> dict[str, float]:
        """The environment's metrics as the episode left them: each name's last value (step()
        reports running values, like a count of guesses)."""
        last: dict[str, float] = {}
        for turn in self.turns:
            last.update(turn.metrics)
        return last

    def tool_errors(self) -> dict[str, int]:
        errors: dict[str, int] = {}
        for turn in self.turns:
            for kind, count in turn.tool_errors.items():
                errors[kind] = errors.get(kind, 0) + count
        return errors

    def completion(self) -> Completion:
        """The episode as the Completion a RolloutGroup holds."""
        ids = tuple(t for segment in self.segments() for t in segment.token_ids)
        text = self.turns[-1].message.get("content") or "" if self.turns else ""
        return Completion(ids, text, self.finish_reason, episode=self)


@dataclass(frozen=True)
class EpisodeLimits:
    max_turns: int = 6  # assistant turns per episode
    max_tokens: int = 4096  # prompt + every turn and environment message
    timeout_s: float = 600.0  # wall clock from the episode's start to its last turn
    max_new_tokens: int = 256  # per assistant turn


@dataclass
class EpisodeSetup:
    """Everything a job's episodes need, built once per job (openrft.train.episodes)."""

    tokenizer: Any
    parser: ToolCallParser
    make_env: Callable[[Example], Any]  # an environment adapter for a row (may raise)
    bridge_for: Callable[[Example], ChatBridge]  # the bridge for a row (its tools)
    encode: Callable[[Example, Sequence[Mapping[str, Any]]], list[int]]  # opening -> prompt ids
    limits: EpisodeLimits
    runner: Runner
    end_token_ids: frozenset[int]
    stop: tuple[str, ...] = ()  # stop strings: a turn's text ends before them


class _EpisodeState:
    """One episode while it runs."""

    def __init__(self, example: Example, env: Any, opening: tuple, prompt: list[int]):
        self.example = example
        self.env = env
        self.opening = opening
        self.prompt = prompt
        self.turns: list[Turn] = []
        self.tokens = len(prompt)  # tokens so far: prompt, turns, environment messages
        self.started = time.monotonic()
        self.env_s = 0.0
        self.finish: FinishReason | None = None
        self.error: str | None = None
        self.lock = threading.Lock()

    def episode(self) -> Episode:
        return Episode(
            self.opening,
            tuple(self.turns),
            self.finish or "stop",
            self.error,
            self.env_s,
            tuple(self.prompt),
        )


def run_episodes(
    engine: Any,
    examples: Sequence[Example],
    prompt_ids: Sequence[Sequence[int]],
    params: SamplingParams,
    setup: EpisodeSetup,
) -> list[list[Completion]]:
    """G = params.n episodes per example; each a Completion carrying its Episode."""
    limits = setup.limits
    n = params.n
    states = _start(examples, prompt_ids, n, setup)
    prompts_by_state = [s.prompt for s in states]
    shared = [
        all(prompts_by_state[p * n + k] == prompts_by_state[p * n] for k in range(n))
        for p in range(len(examples))
    ]
    turn_params = replace(params, max_new_tokens=limits.max_new_tokens)
    generate = getattr(engine, "generate_episodes", None)
    if generate is None:

        def generate(prompts, p, respond):
            generate_by_reprefill(engine, prompts, p, respond)

    # Groups whose G episodes open alike share one prompt (prefilled once); the rest run
    # one episode per prompt.
    batches = [
        ([p * n + k for p in range(len(examples)) if shared[p] for k in range(n)], n),
        ([p * n + k for p in range(len(examples)) if not shared[p] for k in range(n)], 1),
    ]
    for indices, repeats in batches:
        if not indices:
            continue
        prompts = [prompts_by_state[i] for i in indices[::repeats]]

        def respond(seq: int, turn: Completion, indices=indices) -> Future:
            return _respond(states[indices[seq]], turn, setup)

        budget = min(limits.max_new_tokens, limits.max_tokens - max(len(p) for p in prompts))
        generate(prompts, replace(turn_params, n=repeats, max_new_tokens=max(budget, 1)), respond)
    # Closing is best effort (the episodes' data is kept) and concurrent: a remote service
    # answers each close over the network.
    closing = [setup.runner.submit(s.env.close) for s in states if s.env is not None]
    for future in closing:
        with contextlib.suppress(Exception):
            future.result()
    completions = [s.episode().completion() for s in states]
    return [completions[p * n : (p + 1) * n] for p in range(len(examples))]


def _start(
    examples: Sequence[Example], prompt_ids: Sequence[Sequence[int]], n: int, setup: EpisodeSetup
) -> list[Any]:
    """Make and reset every episode's environment (concurrently); a failure is kept on the
    episode (it then ends at its first turn with finish "error")."""
    jobs: list[tuple[Example, Future]] = []
    for example in examples:
        for _ in range(n):
            jobs.append((example, setup.runner.submit(lambda e=example: _reset(e, setup))))
    states = []
    for index, (example, future) in enumerate(jobs):
        env, opening, error, env_s = None, tuple(example.messages), None, 0.0
        try:
            env, reset, env_s = future.result(timeout=setup.limits.timeout_s)
            if reset is not None:
                opening = tuple(dict(m) for m in reset)
        except FutureTimeout:  # given up on: an environment made later is closed then
            future.add_done_callback(_close_late)
            error = f"make_env/reset did not finish within {setup.limits.timeout_s:g} s"
        except Exception as failure:  # the environment's own error, shown on the episode
            error = f"make_env/reset failed: {failure!r}"
        prompt = list(prompt_ids[index // n])
        if opening != tuple(example.messages) and error is None:
            try:
                prompt = setup.encode(example, opening)
            except Exception as failure:
                error = f"reset() returned messages that cannot be rendered: {failure!r}"
        state = _EpisodeState(example, env, opening, prompt)
        state.env_s = env_s
        if error is not None:
            state.finish, state.error = "error", error
        states.append(state)
    return states


def _reset(example: Example, setup: EpisodeSetup) -> tuple[Any, Any, float]:
    """The episode's environment, its opening messages (None: the row's) and the seconds
    making and resetting it took."""
    started = time.monotonic()
    env = setup.make_env(example)
    try:
        reset = env.reset()
        if reset is not None and hasattr(reset, "__await__"):
            reset = setup.runner.wait(reset)
        if reset is not None and (
            not isinstance(reset, list | tuple)
            or not all(isinstance(m, dict) and "role" in m for m in reset)
        ):
            raise EnvironmentFailure("reset() must return a list of message dicts (or None)")
    except BaseException:
        with contextlib.suppress(Exception):  # the episode never starts: its env is done
            env.close()
        raise
    return env, reset, time.monotonic() - started


def _close_late(future: Future) -> None:
    """An environment made after its episode stopped waiting for it."""
    if future.exception() is None:
        with contextlib.suppress(Exception):
            future.result()[0].close()


def _done(value: Continuation | None = None) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def _respond(state: _EpisodeState, turn: Completion, setup: EpisodeSetup) -> Future:
    """Record the turn, and answer it: None (the episode is over) or a Continuation."""
    limits = setup.limits
    parsed = setup.parser(
        raw_turn_text(setup.tokenizer, turn.token_ids, setup.end_token_ids, setup.stop)
    )
    state.tokens += len(turn.token_ids)
    if state.finish is not None:  # the environment failed to start: end at once
        state.turns.append(Turn(turn, parsed.message()))
        return _done()
    if turn.finish_reason == "length":  # cut mid-turn: its tool calls are not trusted
        state.turns.append(Turn(turn, parsed.message()))
        state.finish = "length"
        return _done()
    outcome: Future = Future()
    started = time.monotonic()
    remaining = limits.timeout_s - (started - state.started)
    if remaining <= 0:
        state.turns.append(Turn(turn, parsed.message()))
        state.finish = "timeout"
        return _done()

    def step() -> Any:
        return state.env.step(parsed)

    step_future = setup.runner.submit(step)

    def finish(done_future: Future | None) -> None:
        """Runs once: when the step answers, or at the episode's deadline."""
        with state.lock:
            if outcome.done():
                return
            state.env_s += time.monotonic() - started
            if done_future is None:  # the deadline came first: stop the step if it can be
                state.turns.append(Turn(turn, parsed.message()))
                state.finish = "timeout"
                outcome.set_result(None)
                stop = getattr(state.env, "stop", None)
                if callable(stop):
                    stop()
                return
            try:
                result = _checked_result(done_future)
                continuation = _after_step(state, turn, parsed, result, setup)
            except EnvironmentTimeout:  # the worker's own bound on the step came first
                state.turns.append(Turn(turn, parsed.message()))
                state.finish = "timeout"
                continuation = None
            except EnvironmentFailure as failure:
                state.turns.append(Turn(turn, parsed.message()))
                state.finish, state.error = "error", str(failure)
                continuation = None
            outcome.set_result(continuation)

    timer = threading.Timer(remaining, finish, args=(None,))
    timer.daemon = True
    timer.start()
    step_future.add_done_callback(lambda done: (timer.cancel(), finish(done)))
    return outcome


def _checked_result(done: Future) -> StepResult:
    error = done.exception()
    if isinstance(error, EnvironmentTimeout):
        raise error
    if error is not None:
        raise EnvironmentFailure(describe_step_error(error))
    result = done.result()
    return result if isinstance(result, StepResult) else check_step(result, "step()")


def _after_step(
    state: _EpisodeState,
    turn: Completion,
    parsed: ParsedTurn,
    result: StepResult,
    setup: EpisodeSetup,
) -> Continuation | None:
    limits = setup.limits
    record = Turn(
        turn,
        parsed.message(),
        result.messages,
        (),
        result.reward,
        result.tool_calls,
        dict(result.tool_errors),
        dict(result.metrics),
    )
    if result.done:
        state.turns.append(record)
        state.finish = "stop"
        return None
    if len(state.turns) + 1 >= limits.max_turns:
        state.turns.append(record)
        state.finish = "max_turns"
        return None
    last = turn.token_ids[-1] if turn.token_ids else None
    turn_end = setup.tokenizer.decode([last]) if last in setup.end_token_ids else ""
    bridge = setup.bridge_for(state.example).token_ids(result.messages, turn_end)
    room = limits.max_tokens - state.tokens - len(bridge)
    if room < 1:
        state.turns.append(record)
        state.finish = "length"
        return None
    state.turns.append(replace(record, env_token_ids=tuple(bridge)))
    state.tokens += len(bridge)
    return Continuation(tuple(bridge), min(limits.max_new_tokens, room))


def generate_by_reprefill(
    engine: Any, prompts: Sequence[Sequence[int]], params: SamplingParams, respond: Respond
) -> None:
    """Episodes through an engine that only generates single turns: each turn is a new
    token-id prompt of the whole history so far (sampled tokens kept as sampled). What
    vLLM runs (its prefix cache skips most of the history), and the baseline of
    bench/episodes.py."""
    n = params.n
    history = {p * n + k: list(prompt) for p, prompt in enumerate(prompts) for k in range(n)}
    caps = dict.fromkeys(history, params.max_new_tokens)
    first = engine.generate(list(prompts), params)
    turns = {p * n + k: group[k] for p, group in enumerate(first) for k in range(n)}
    seed = params.seed
    while turns:
        pending = {seq: respond(seq, turn) for seq, turn in turns.items()}
        live: dict[int, Continuation] = {}
        for seq, future in pending.items():
            continuation = future.result()
            if continuation is not None:
                history[seq] += [*turns[seq].token_ids, *continuation.token_ids]
                caps[seq] = continuation.max_new_tokens
                live[seq] = continuation
        turns = {}
        seed += 1
        for cap in sorted({caps[seq] for seq in live}):
            seqs = [seq for seq in live if caps[seq] == cap]
            step_params = replace(params, n=1, max_new_tokens=cap, seed=seed)
            outputs = engine.generate([history[seq] for seq in seqs], step_params)
            turns.update({seq: out[0] for seq, out in zip(seqs, outputs, strict=True)})
