"""Agents written against an OpenAI client, trained as they are (`env.agent = "my_agent.py:run"`).

    async def run(client: openai.AsyncOpenAI, item: dict) -> float | dict

gets a client bound to the policy being trained (the agent proxy, openrft.rollout.agent_proxy:
any model name works) and the dataset row as reward functions see it. It calls
`client.chat.completions.create(...)` as often as it likes (with tools, streaming or not),
runs its own tools and logic, and returns the episode's reward: a number, or a dict of
numbers with "score" (the other entries are logged). A plain `def run(client, item)` gets a
sync `openai.OpenAI` client and runs on a worker thread.

Training rows come from the calls, never from re-tokenized text: a call whose prompt extends
the previous call's prompt and completion token for token continues that row (the new
tokens between are the environment's, loss mask 0); a call that does not (the agent rewrote
or trimmed its history) starts a row of its own, trained with the episode's advantage
(counted: `episode/unmerged_calls`). An agent that raises, returns no reward, or outlives
`env.episode_timeout_s` fails its episode (finish "error" / "timeout"), counted, never the
step.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from openrft.rollout.agent_proxy import AgentCall, AgentProxy, EpisodeCalls
from openrft.rollout.environment import Runner
from openrft.rollout.episodes import Episode, Turn
from openrft.types import Completion, Example, FinishReason


def run_agent_episodes(
    proxy: AgentProxy,
    agent: Callable[..., Any],
    examples: Sequence[Example],
    n: int,
    runner: Runner,
    timeout_s: float,
) -> list[list[Completion]]:
    """n episodes of `agent` per example, run concurrently (at most runner.max_concurrent at
    once); each a Completion carrying its Episode."""
    url = proxy.start()
    limit = asyncio.Semaphore(runner.max_concurrent)  # used on the runner's loop only

    async def one(example: Example) -> Episode:
        async with limit:
            return await _episode(proxy, agent, example, url, timeout_s)

    futures = [runner.submit(lambda e=e: one(e)) for e in examples for _ in range(n)]
    episodes = [future.result() for future in futures]
    completions = [episode.completion() for episode in episodes]
    return [completions[p * n : (p + 1) * n] for p in range(len(examples))]


async def _episode(
    proxy: AgentProxy, agent: Callable[..., Any], example: Example, url: str, timeout_s: float
) -> Episode:
    """One run of the agent with a client under a fresh key. A sync agent runs on a worker
    thread; past the timeout it is no longer waited for, and its key no longer served."""
    import openai

    key = proxy.open()
    started = time.monotonic()
    options = {"base_url": url, "api_key": key, "max_retries": 0, "timeout": timeout_s}
    if inspect.iscoroutinefunction(agent):
        client: Any = openai.AsyncOpenAI(**options)
        running = agent(client, example.item())
    else:
        client = openai.OpenAI(**options)
        running = asyncio.to_thread(agent, client, example.item())
    finish: FinishReason = "stop"
    outcome, error = None, None
    try:
        outcome = await asyncio.wait_for(running, timeout_s)
    except TimeoutError:
        finish, error = "timeout", f"the agent did not return within {timeout_s:g} s"
    except Exception as failure:  # the agent's own error, shown on the episode
        finish, error = "error", f"the agent raised {failure!r}"
    finally:
        calls = proxy.close(key)
        closing = client.close()
        if inspect.isawaitable(closing):
            await closing
    return _finished(calls, outcome, finish, error, time.monotonic() - started)


def run_external_episodes(
    proxy: AgentProxy, examples: Sequence[Example], n: int, timeout_s: float
) -> list[list[Completion]]:
    """n rollouts per example offered to agents outside openrft (`env.agent = "external"`):
    each takes one with POST /v1/rollouts, calls the model with its rollout id as the API
    key and reports its reward with POST /v1/rollouts/{id}/reward. A rollout not reported
    within `timeout_s` ends with finish "timeout" (counted), its late report refused."""
    started = time.monotonic()
    keys = [proxy.open(example.item()) for example in examples for _ in range(n)]
    episodes = []
    for key in keys:
        reported = proxy.episodes[key].reported.wait(
            max(0.0, started + timeout_s - time.monotonic())
        )
        calls = proxy.close(key)
        if reported:
            episodes.append(
                _finished(calls, calls.outcome, "stop", None, time.monotonic() - started)
            )
        else:
            error = f"no reward was reported for the rollout within {timeout_s:g} s"
            episodes.append(_finished(calls, None, "timeout", error, time.monotonic() - started))
    completions = [episode.completion() for episode in episodes]
    return [completions[p * n : (p + 1) * n] for p in range(len(examples))]


def _finished(
    calls: EpisodeCalls, outcome: Any, finish: FinishReason, error: str | None, wall_s: float
) -> Episode:
    outcome, turn_rewards, problem = split_turn_rewards(outcome, len(calls.calls))
    if finish == "stop" and problem:
        finish, error = "error", problem
    if finish == "stop" and outcome is None and turn_rewards is None:
        finish, error = "error", "the agent returned None: return its reward (or a dict)"
    if finish == "stop" and calls.limit is not None:
        finish = calls.limit  # it ran into a limit and still returned a reward: a cut episode
    episode = episode_from_calls(calls.calls, finish, error, outcome, turn_rewards)
    # env_s of an agent's episode: its own work (its tools, its logic), not the model's.
    return replace(episode, env_s=max(0.0, wall_s - calls.model_s))


def split_turn_rewards(
    outcome: Any, calls: int
) -> tuple[Any, list[float | None] | None, str | None]:
    """An agent's return value without its "turn_rewards" (one number, or null, per model
    call, in the order of the calls), those rewards, and what is wrong with them. A dict left
    with nothing else is None (the episode's reward is then the turns')."""
    if not isinstance(outcome, dict) or "turn_rewards" not in outcome:
        return outcome, None, None
    rest = {k: v for k, v in outcome.items() if k != "turn_rewards"}
    rewards = outcome["turn_rewards"]
    problem = None
    if not isinstance(rewards, list) or len(rewards) != calls:
        problem = f"turn_rewards must be a list of one reward per model call ({calls})"
    elif not all(r is None or _finite(r) for r in rewards):
        problem = f"turn_rewards must hold finite numbers or nulls, got {rewards!r}"
    return rest or None, None if problem else [_float(r) for r in rewards], problem


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and math.isfinite(float(value))


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def episode_from_calls(
    calls: Sequence[AgentCall],
    finish: FinishReason = "stop",
    error: str | None = None,
    outcome: Any = None,
    turn_rewards: Sequence[float | None] | None = None,
) -> Episode:
    """The calls as rows: each call joins the row whose tokens its prompt extends (the
    tokens in between are the environment's), or starts a row. The row of the first call
    is the episode; the others are its branches. `turn_rewards` (one per call) become the
    rewards of the calls' turns."""
    rows: list[list[AgentCall]] = []
    for call in calls:
        for row in rows:
            tip = row[-1]
            sofar = tip.prompt_ids + tip.completion.token_ids
            if call.prompt_ids[: len(sofar)] == sofar:
                row.append(call)
                break
        else:
            rows.append([call])
    rewards = dict(zip(map(id, calls), turn_rewards or (), strict=False))
    return episode_from_rows(rows, finish, error, outcome, rewards)


def calls_of_branch(
    calls: Sequence[AgentCall], token_ids: Sequence[int], sampled_mask: Sequence[bool]
) -> list[AgentCall]:
    """The calls a client's own account of a training sample (verifiers' `Branch`: tokens
    and which were sampled) is made of: each sampled span must be a completion the policy
    gave for exactly the tokens before it. Raises ValueError naming the first span that is
    not, so nothing the policy did not sample is trained on as if it were."""
    if len(token_ids) != len(sampled_mask):
        raise ValueError(f"{len(token_ids)} tokens but {len(sampled_mask)} mask entries")
    served: dict[tuple[int, ...], list[AgentCall]] = {}
    for call in calls:
        served.setdefault(call.prompt_ids, []).append(call)
    row, start = [], 0
    while start < len(token_ids):
        if not sampled_mask[start]:
            start += 1
            continue
        end = start
        while end < len(token_ids) and sampled_mask[end]:
            end += 1
        span, before = tuple(token_ids[start:end]), tuple(token_ids[:start])
        match = next((c for c in served.get(before, ()) if c.completion.token_ids == span), None)
        if match is None:
            raise ValueError(
                f"the sampled tokens {start}..{end} are not a completion the policy gave "
                f"after those {start} tokens"
            )
        row.append(match)
        start = end
    if not row:
        raise ValueError("no sampled tokens")
    return row


def episode_from_rows(
    rows: Sequence[Sequence[AgentCall]],
    finish: FinishReason = "stop",
    error: str | None = None,
    outcome: Any = None,
    rewards: dict[int, float | None] | None = None,
) -> Episode:
    """An episode whose rows are the given calls (each continuing the one before): the
    first row is the episode, the others its branches. `rewards`: a reward for a call's
    turn, by id() of the call."""
    if not rows:  # the agent never called the model: a reward, but nothing to train
        return Episode((), (), finish, error, outcome=outcome)
    main, *others = (_row_episode(row, finish, error, rewards or {}) for row in rows)
    return Episode(
        main.opening,
        main.turns,
        finish,
        error,
        prompt_token_ids=main.prompt_token_ids,
        outcome=outcome,
        branches=tuple(others),
    )


def _row_episode(
    row: Sequence[AgentCall],
    finish: FinishReason,
    error: str | None,
    rewards: dict[int, float | None],
) -> Episode:
    turns = []
    for call, after in zip(row, [*row[1:], None], strict=True):
        tool_calls = len(call.reply.get("tool_calls") or ())
        reward = rewards.get(id(call))
        if after is None:
            turns.append(Turn(call.completion, call.reply, reward=reward, tool_calls=tool_calls))
            continue
        sofar = len(call.prompt_ids) + len(call.completion.token_ids)
        # The messages the agent added after this reply (tool results, a user turn), when
        # its history kept the reply where it was.
        added = after.messages[len(call.messages) + 1 :]
        turns.append(
            Turn(
                call.completion,
                call.reply,
                tuple(dict(m) for m in added),
                after.prompt_ids[sofar:],
                reward=reward,
                tool_calls=tool_calls,
            )
        )
    first = row[0]
    return Episode(
        tuple(dict(m) for m in first.messages),
        tuple(turns),
        finish,
        error,
        prompt_token_ids=first.prompt_ids,
    )
