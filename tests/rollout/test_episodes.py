"""The episode runner: tool turns, user environments, limits, failures and token continuity.

A scripted policy stands in for the model where the test needs particular turns (a random
tiny model never writes a tool call); the last tests run the real in-process engine."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_model import build_tool_tokenizer

from openrft.config import load_config
from openrft.data.render import encode_prompt
from openrft.models.load import load_model
from openrft.rollout.episodes import Episode, run_episodes
from openrft.rollout.hf_engine import HFEngine
from openrft.train.episodes import combined_grade, episode_job, row_tools
from openrft.types import Completion, Example, Grade, SamplingParams, TrainRow

END = "<|im_end|>"
TOOLS_PY = '''
import time

def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b

def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"
'''


class ScriptedPolicy:
    """Writes scripted turns (script(seq, turn index) -> text) through the engine protocol
    and records every token of each episode as the policy would have seen it."""

    policy_version = 0

    def __init__(self, tokenizer, script):
        self.tokenizer = tokenizer
        self.script = script
        self.seen: dict[int, list[int]] = {}
        self.end = tokenizer.convert_tokens_to_ids(END)

    def generate_episodes(self, prompts, params, respond):
        from openrft.types import Completion

        n = params.n
        live = {p * n + k: list(prompt) for p, prompt in enumerate(prompts) for k in range(n)}
        caps = dict.fromkeys(live, params.max_new_tokens)
        turn = 0
        while live:
            futures: dict[int, Future] = {}
            for seq in live:
                ids = self.tokenizer(self.script(seq, turn), add_special_tokens=False)["input_ids"]
                ids, reason = (ids + [self.end], "stop")
                if len(ids) > caps[seq]:
                    ids, reason = ids[: caps[seq]], "length"
                live[seq] += ids
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                futures[seq] = respond(seq, Completion(tuple(ids), text, reason))
            for seq, future in futures.items():
                continuation = future.result()
                if continuation is None:
                    self.seen[seq] = live[seq]
                else:
                    live[seq] += continuation.token_ids
                    caps[seq] = continuation.max_new_tokens
            live = {s: ids for s, ids in live.items() if s not in self.seen}
            turn += 1


@pytest.fixture(scope="module")
def tokenizer():
    return build_tool_tokenizer()


@pytest.fixture(scope="module")
def tools_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tools") / "tools.py"
    path.write_text(TOOLS_PY)
    return path


def example(text: str = "What is 3 * 4?", **metadata) -> Example:
    return Example("row", ({"role": "user", "content": text},), "12", metadata)


def run(tokenizer, overrides, script, examples=None, n=2, max_new_tokens=200):
    config = load_config(None, [*overrides, f"rollout.max_new_tokens={max_new_tokens}"])
    job = episode_job(config, tokenizer, frozenset({tokenizer.convert_tokens_to_ids(END)}))
    examples = examples or [example()]
    prompts = [
        encode_prompt(e.messages, tokenizer, "model", row_tools(e, job.tools)) for e in examples
    ]
    policy = ScriptedPolicy(tokenizer, script)
    try:
        groups = run_episodes(policy, examples, prompts, SamplingParams(n=n), job.setup)
    finally:
        job.close()
    return groups, policy, prompts


def call(name: str, **arguments) -> str:
    import json

    return f'<tool_call>{{"name": "{name}", "arguments": {json.dumps(arguments)}}}</tool_call>'


def test_a_tool_episode_and_its_training_row_match_what_the_policy_saw(tokenizer, tools_file):
    def script(seq, turn):
        return call("multiply", a=3, b=4) if turn == 0 else "It is 12."

    groups, policy, prompts = run(tokenizer, [f"env.tools={tools_file}"], script)
    episode = groups[0][0].episode
    assert episode.finish_reason == "stop" and len(episode.turns) == 2
    messages = episode.messages()
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["tool_calls"][0]["function"]["name"] == "multiply"
    assert messages[2] == {
        "role": "tool",
        "content": "12",
        "tool_call_id": messages[1]["tool_calls"][0]["id"],
        "name": "multiply",
    }
    assert messages[3]["content"] == "It is 12."
    assert episode.tool_calls == 1 and episode.tool_errors() == {}
    # the row is the policy's own token stream; only its sampled tokens are trained
    segments = episode.segments()
    row = TrainRow.from_segments(tuple(prompts[0]), segments, (1.0,) * len(segments))
    assert list(row.token_ids) == policy.seen[0]
    trained = [t for t, m in zip(row.response, row.loss_mask, strict=True) if m]
    sampled = [t for s in segments if s.sampled for t in s.token_ids]
    assert trained == sampled
    assert "<tool_response>" in tokenizer.decode(list(segments[1].token_ids))
    assert not segments[1].sampled
    # the environment's tokens are what the template renders there
    text = tokenizer.decode(policy.seen[0])
    assert text.count("<tool_response>") == 1 and text.endswith(f"It is 12.{END}")


def test_tool_errors_are_answered_and_counted(tokenizer, tools_file):
    turns = [call("nope"), "<tool_call>{broken</tool_call>", call("multiply", a="x", b=1), "ok"]
    groups, _, _ = run(
        tokenizer, [f"env.tools={tools_file}", "env.max_turns=6"], lambda s, t: turns[t]
    )
    episode = groups[0][0].episode
    assert episode.finish_reason == "stop" and len(episode.turns) == 4
    assert episode.tool_errors() == {"unknown_tool": 1, "parse_error": 1, "bad_arguments": 1}
    tool_messages = [m for m in episode.messages() if m["role"] == "tool"]
    assert [m["content"].split(":")[0] for m in tool_messages] == [
        "Error (unknown_tool)", "Error (parse_error)", "Error (bad_arguments)",
    ]  # fmt: skip


def test_limits_end_episodes_with_their_reason(tokenizer, tools_file):
    def always(seq, turn):
        return call("multiply", a=turn, b=2)

    groups, _, _ = run(tokenizer, [f"env.tools={tools_file}", "env.max_turns=3"], always)
    assert [c.finish_reason for c in groups[0]] == ["max_turns", "max_turns"]
    assert len(groups[0][0].episode.turns) == 3
    groups, policy, prompts = run(
        tokenizer, [f"env.tools={tools_file}", "env.max_episode_tokens=900"], always
    )
    episode = groups[0][0].episode
    assert episode.finish_reason == "length"
    assert len(prompts[0]) < 500 and len(policy.seen[0]) <= 900
    groups, _, _ = run(
        tokenizer,
        [f"env.tools={tools_file}", "env.episode_timeout_s=0.3", "env.tool_timeout_s=5"],
        lambda seq, turn: call("slow", seconds=2.0),
    )
    assert [c.finish_reason for c in groups[0]] == ["timeout", "timeout"]


def test_tool_calls_of_different_episodes_run_concurrently(tokenizer, tools_file):
    def script(seq, turn):
        return call("slow", seconds=0.6) if turn == 0 else "done"

    started = time.monotonic()
    groups, _, _ = run(tokenizer, [f"env.tools={tools_file}"], script, n=4)
    assert all(c.finish_reason == "stop" for c in groups[0])
    assert time.monotonic() - started < 4 * 0.6  # not one after another


ENV_PY = '''
import asyncio

class Guess:
    """The number is the row's reference answer; feedback every turn, reward per turn."""

    def __init__(self, item, style):
        self.target = int(item["reference_answer"])
        self.style = style
        self.turns = 0

    def reset(self):
        return [{"role": "user", "content": "Guess a number from 0 to 9."}]

    def step(self, message):
        self.turns += 1
        if self.style == "raise" and self.turns == 2:
            raise RuntimeError("the simulator crashed")
        if self.style == "nan":
            return {"messages": [], "reward": float("nan"), "done": False}
        guess = int(message["content"].split()[-1])
        done = guess == self.target
        hint = "correct" if done else ("higher" if guess < self.target else "lower")
        return {"messages": [{"role": "user", "content": hint}], "reward": -0.1,
                "done": done, "metrics": {"guess": guess}}

class AsyncGuess(Guess):
    async def step(self, message):
        await asyncio.sleep(0)
        return Guess.step(self, message)

def make_env(item):
    return Guess(item, item.get("style", ""))

def make_async_env(item):
    return AsyncGuess(item, "")

class Chatter:
    """Answers any turn with a user message of a length that differs per turn."""

    def __init__(self):
        self.turns = 0

    def step(self, message):
        self.turns += 1
        return {"messages": [{"role": "user", "content": "again " * self.turns}], "done": False}

def make_chatter(item):
    return Chatter()
'''


@pytest.fixture(scope="module")
def env_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("env") / "guess_env.py"
    path.write_text(ENV_PY)
    return path


@pytest.mark.parametrize("factory", ["make_env", "make_async_env"])
def test_a_user_environment_with_feedback_and_turn_rewards(tokenizer, env_file, factory):
    guesses = ["I guess 3", "I guess 8", "I guess 5"]
    row = Example("r", ({"role": "user", "content": "play"},), "5")
    groups, policy, prompts = run(
        tokenizer, [f"env.environment={env_file}:{factory}"], lambda s, t: guesses[t], [row]
    )
    episode = groups[0][0].episode
    assert episode.finish_reason == "stop"
    assert [t.reward for t in episode.turns] == [-0.1, -0.1, -0.1]
    assert [t.metrics["guess"] for t in episode.turns] == [3.0, 8.0, 5.0]
    messages = episode.messages()
    assert messages[0]["content"] == "Guess a number from 0 to 9."  # reset() opened it
    assert [m["content"] for m in messages if m["role"] == "user"][1:] == [
        "higher",
        "lower",
        "correct",
    ]
    # the prompt is the reset opening's, not the row's
    assert episode.prompt_token_ids != tuple(prompts[0])
    assert "Guess a number" in tokenizer.decode(list(episode.prompt_token_ids))
    assert list(episode.prompt_token_ids) == policy.seen[0][: len(episode.prompt_token_ids)]
    grade = combined_grade(episode, Grade(1.0), "sum")
    assert grade.score == pytest.approx(0.7)
    assert combined_grade(episode, None, "turns").score == pytest.approx(-0.3)
    assert combined_grade(episode, Grade(1.0), "episode").score == 1.0


@pytest.mark.parametrize(("style", "problem"), [("raise", "simulator crashed"), ("nan", "nan")])
def test_a_failing_environment_fails_the_episode_not_the_step(tokenizer, env_file, style, problem):
    row = Example("r", ({"role": "user", "content": "play"},), "5", {"style": style})
    groups, _, _ = run(
        tokenizer, [f"env.environment={env_file}:make_env"], lambda s, t: "I guess 1", [row]
    )
    episode = groups[0][0].episode
    assert episode.finish_reason == "error" and problem in episode.error
    grade = combined_grade(episode, Grade(1.0), "episode")
    assert grade.score is None and grade.error.kind == "runtime_error"


def test_an_environment_that_cannot_start_is_an_error_episode(tokenizer, tmp_path):
    (tmp_path / "bad_env.py").write_text("def make_env(item):\n    raise KeyError('x')\n")
    groups, _, _ = run(
        tokenizer, [f"env.environment={tmp_path / 'bad_env.py'}:make_env"], lambda s, t: "hi"
    )
    assert all(c.finish_reason == "error" for c in groups[0])
    assert "make_env/reset failed" in groups[0][0].episode.error


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir))
    tokenizer.chat_template = build_tool_tokenizer().chat_template
    return model.eval(), tokenizer


class Recorder:
    """Wraps a decoder and keeps, per batch row, every real token it was fed."""

    def __init__(self, decoder):
        self.decoder = decoder
        self.fed: list[list[int]] = []
        self.rows: list[int] = []

    def __getattr__(self, name):
        return getattr(self.decoder, name)

    def prefill(self, ids, mask, positions, repeats, room):
        prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
        self.fed = [list(p) for p in prompts for _ in range(repeats)]
        self.rows = list(range(len(self.fed)))
        return self.decoder.prefill(ids, mask, positions, repeats, room)

    def step(self, tokens, positions, idle=None):
        for row, token in enumerate(tokens.tolist()):
            if idle is None or not idle[row]:
                self.fed[self.rows[row]].append(token)
        return self.decoder.step(tokens, positions, idle)

    def extend(self, tokens, real, positions):
        for row, (chunk, keep) in enumerate(zip(tokens.tolist(), real.tolist(), strict=True)):
            self.fed[self.rows[row]] += [t for t, k in zip(chunk, keep, strict=True) if k]
        return self.decoder.extend(tokens, real, positions)

    def keep(self, rows):
        self.rows = [self.rows[r] for r in rows.tolist()]
        return self.decoder.keep(rows)


@pytest.mark.parametrize("decoder", ["compact", "transformers"])
def test_the_engine_feeds_exactly_the_training_row(tiny, env_file, decoder):
    """Real decoding: every token the decoder was fed for an episode, in order, is the
    episode's training row (the prompt, each sampled turn, each environment message), and
    the next sampled token after each turn's last is the bridge's first."""
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, decoder=decoder)
    engine.decoder = recorder = Recorder(engine.decoder)
    config = load_config(None, [f"env.environment={env_file}:make_chatter", "env.max_turns=3"])
    job = episode_job(config, tokenizer, engine.end_token_ids)
    row = Example("r", ({"role": "user", "content": "play"},), "5")
    prompt = encode_prompt(row.messages, tokenizer, "model")
    try:
        groups = run_episodes(
            engine, [row], [prompt],
            # common characters as stop strings: the random model's turns end within the cap
            SamplingParams(n=3, temperature=1.0, max_new_tokens=6, stop=(" ", "e", "a", "t")),
            job.setup,
        )  # fmt: skip
    finally:
        job.close()
    for seq, completion in enumerate(groups[0]):
        episode = completion.episode
        segments = episode.segments()
        row_ids = TrainRow.from_segments(
            episode.prompt_token_ids, segments, (0.0,) * len(segments)
        ).token_ids
        fed = recorder.fed[seq]
        # the last sampled token of the last turn is never fed (nothing follows it)
        assert list(row_ids[:-1]) == fed[: len(row_ids) - 1], seq
        assert len(episode.turns) == 3 or episode.finish_reason == "length"
    assert sum(len(c.episode.turns) for c in groups[0]) >= 6  # several turns were continued
    assert torch.is_grad_enabled()


def test_an_agents_grade_follows_env_reward():
    """ "episode": what the agent returned; "turns": its turn_rewards summed (branches'
    turns too); "sum": both. Whatever a mode needs and is missing is a failure, not a 0."""
    from openrft.rollout.episodes import Turn
    from openrft.train.episodes import agent_grade

    def turn(reward):
        return Turn(Completion((1,), "x", "stop"), {"role": "assistant"}, reward=reward)

    branch = Episode((), (turn(0.5),), "stop")
    episode = Episode((), (turn(0.25), turn(None)), "stop", outcome={"score": 1.0, "n": 2.0})
    episode = replace(episode, branches=(branch,))
    assert agent_grade(episode).score == 1.0 and agent_grade(episode).components["n"] == 2.0
    assert agent_grade(episode, "turns").score == pytest.approx(0.75)
    assert agent_grade(episode, "sum").score == pytest.approx(1.75)
    plain = Episode((), (turn(None),), "stop", outcome=0.5)
    assert agent_grade(plain, "turns").error.kind == "invalid_output"
    only_turns = replace(episode, outcome=None)
    assert agent_grade(only_turns, "turns").score == pytest.approx(0.75)
    assert "no reward" in agent_grade(only_turns).error.message
    assert agent_grade(replace(episode, finish_reason="timeout")).error.kind == "timeout"
