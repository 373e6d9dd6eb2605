"""Multi-turn jobs end to end on the tiny model: an environment answering every turn with
per-turn rewards, per-turn advantages, episode metrics and rollouts; bad setups refused."""

from __future__ import annotations

import json

import pytest
import torch

from openrft.config import AlgoConfig, EnvConfig
from openrft.errors import ConfigError
from openrft.rollout.episodes import Episode, Turn
from openrft.train.loop import train
from openrft.train.rows import compute_advantages, training_rows
from openrft.types import Completion, Example, Grade, RolloutGroup

from .helpers import tiny_job

ENV_PY = '''
class Echo:
    """Rewards a turn by whether it contains the row's letter; feedback each turn."""

    def __init__(self, item):
        self.letter = item["reference_answer"]
        self.turns = 0

    def step(self, message):
        self.turns += 1
        hit = self.letter in message["content"]
        return {"messages": [{"role": "user", "content": "more " * self.turns}],
                "reward": float(hit), "done": self.turns >= 2, "metrics": {"hit": float(hit)}}

def make_env(item):
    return Echo(item)
'''


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("advantage", ["grpo_per_turn", "grpo"])
def test_an_environment_job_trains_on_episodes(tmp_path, tiny_model_dir, advantage):
    (tmp_path / "echo_env.py").write_text(ENV_PY)
    config = tiny_job(
        tmp_path, tiny_model_dir,
        f"env.environment={tmp_path / 'echo_env.py'}:make_env",
        "env.reward=sum", f"algo.advantage={advantage}", "train.max_steps=2",
        'rollout.stop=[" ", "e"]',  # the random tiny model's turns end within the cap
    )  # fmt: skip
    run_dir = tmp_path / "run"
    train(config, run_dir, show_progress=False)
    metrics = read(run_dir / "metrics.jsonl")
    step = metrics[1]
    assert step["episode/turns_mean"] > 1
    assert step["episode/finish/stop"] + step["episode/finish/length"] == pytest.approx(1.0)
    assert "reward/turn_mean" in step and step["time/env_s"] >= 0
    assert step["episode/tool_calls_mean"] == 0 and step["episode/tool_errors"] == 0
    assert "val/episode/turns_mean" in metrics[0]  # validation runs episodes too
    rollouts = read(run_dir / "rollouts.jsonl")
    completion = rollouts[0]["completions"][0]
    assert completion["messages"][0]["role"] == "assistant"
    assert len(completion["turn_rewards"]) == completion["turns"]
    assert [m.get("hit") for m in completion["turn_metrics"]] == completion["turn_rewards"]
    assert 0 <= step["env/hit"] <= 1  # the environment's own metric, logged per step
    if completion["turns"] > 1:
        assert completion["messages"][1] == {"role": "user", "content": "more "}
    assert step["policy/entropy"] > 0 and step["train/tokens_trained"] > 0
    assert step["episode/tool_error_rate"] == 0
    assert (run_dir / "episodes.png").stat().st_size > 1000  # plotted in the report
    assert "episodes.png" in (run_dir / "report.md").read_text()


AGENT_PY = """
async def run(client, item):
    # Two calls, the second after a user turn the agent writes; a reward from the replies.
    messages = list(item["messages"])
    first = await client.chat.completions.create(model="my-model", messages=messages)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "again"}]
    second = await client.chat.completions.create(model="my-model", messages=messages)
    text = first.choices[0].message.content + second.choices[0].message.content
    return {"score": float(len(text) % 3) / 2, "chars": float(len(text))}
"""


def test_an_agent_job_trains_on_the_agents_calls(tmp_path, tiny_model_dir):
    (tmp_path / "my_agent.py").write_text(AGENT_PY)
    config = tiny_job(
        tmp_path, tiny_model_dir, f"env.agent={tmp_path / 'my_agent.py'}:run", "train.max_steps=2"
    )
    run_dir = tmp_path / "run"
    train(config, run_dir, show_progress=False)
    metrics = read(run_dir / "metrics.jsonl")
    step = metrics[1]
    # Both calls of each of the 8 episodes: in its row, or (the random model's text does not
    # re-tokenize as sampled) in a row of their own.
    assert step["episode/turns_mean"] * 8 + step["episode/unmerged_calls"] == 16
    assert step["reward/chars/mean"] > 0 and step["reward/error_rate"] == 0
    assert step["train/tokens_trained"] > 0 and step["time/env_s"] >= 0
    assert "val/episode/turns_mean" in metrics[0]  # validation runs the agent too
    completion = read(run_dir / "rollouts.jsonl")[0]["completions"][0]
    assert [m["role"] for m in completion["messages"]][:1] == ["assistant"]
    assert completion["components"]["chars"] >= 0


def test_a_job_trains_on_external_agents_rollouts(tmp_path, tiny_model_dir):
    """env.agent = "external": agents outside the job take rollouts over HTTP, call the
    policy with the plain openai client and report rewards; the job trains on their calls."""
    import socket
    import threading

    import httpx
    import openai

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/"
    config = tiny_job(
        tmp_path, tiny_model_dir, "env.agent=external", f"env.agent_port={port}",
        "train.max_steps=2", "env.episode_timeout_s=60",
    )  # fmt: skip
    done = threading.Event()

    def agents() -> None:
        while not done.is_set():
            try:
                offer = httpx.post(url + "rollouts")
            except httpx.HTTPError:  # the job has not started listening yet
                continue
            if offer.status_code != 200:
                done.wait(0.01)  # none offered yet: ask again
                continue
            rollout = offer.json()
            client = openai.OpenAI(base_url=rollout["base_url"], api_key=rollout["api_key"])
            reply = client.chat.completions.create(model="m", messages=rollout["item"]["messages"])
            reward = {"reward": float(len(reply.choices[0].message.content) % 2)}
            httpx.post(f"{url}rollouts/{rollout['rollout_id']}/reward", json=reward)

    worker = threading.Thread(target=agents, daemon=True)
    worker.start()
    try:
        train(config, tmp_path / "run", show_progress=False)
    finally:
        done.set()
        worker.join(10)
    metrics = read(tmp_path / "run" / "metrics.jsonl")
    assert metrics[1]["episode/finish/stop"] == 1.0 and metrics[1]["reward/error_rate"] == 0
    assert metrics[1]["train/tokens_trained"] > 0
    assert "val/reward/mean" in metrics[0]  # validation rollouts go to the agents too


def test_a_tool_job_on_a_model_without_tool_support_is_refused(tmp_path, tiny_model_dir):
    (tmp_path / "tools.py").write_text("def add(a: int, b: int) -> int:\n    return a + b\n")
    config = tiny_job(tmp_path, tiny_model_dir, f"env.tools={tmp_path / 'tools.py'}")
    with pytest.raises(ConfigError, match="no tool support"):
        train(config, tmp_path / "run", show_progress=False)


def test_env_config_conflicts_are_named(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="env.environment"):
        tiny_job(tmp_path, tiny_model_dir, "env.tools=t.py", "env.environment=e.py:f")
    with pytest.raises(ConfigError, match="algo.overlong_buffer"):
        tiny_job(tmp_path, tiny_model_dir, "env.tools=t.py", "algo.overlong_buffer=2")
    with pytest.raises(ConfigError, match="env.agent"):
        tiny_job(tmp_path, tiny_model_dir, "env.agent=a.py:run", "env.tools=t.py")
    with pytest.raises(ConfigError, match="env.tool_endpoints.x"):
        tiny_job(tmp_path, tiny_model_dir, "env.tool_endpoints={x='ftp://a'}")


def episode(turn_tokens, env_tokens, rewards, finish="stop") -> Completion:
    turns = []
    for k, (sampled, reward) in enumerate(zip(turn_tokens, rewards, strict=True)):
        env = env_tokens[k] if k < len(env_tokens) else ()
        turns.append(
            Turn(Completion(tuple(sampled), "x", "stop"), {"role": "assistant", "content": "x"},
                 env_token_ids=tuple(env), reward=reward)
        )  # fmt: skip
    ep = Episode((), tuple(turns), finish, prompt_token_ids=(1, 2))
    return ep.completion()


def test_episode_rows_mask_environment_tokens_and_carry_per_turn_advantages():
    """Two episodes of one prompt, hand-computed per-turn GRPO: turn rewards (sum mode)
    [1, 0] and [0, 0] with grades 1 and 0 -> returns [2, 1] and [0, 0]; per turn over the
    group: turn 0 (2 vs 0) -> +-1/(std) ..., turn 1 (1 vs 0) -> likewise."""
    a = episode([[5, 6], [7]], [[8, 9, 10]], [1.0, 0.0])
    b = episode([[5], [6, 6]], [[11]], [0.0, 0.0])
    example = Example("e", ({"role": "user", "content": "q"},))
    group = RolloutGroup(example, (1, 2), (a, b), (Grade(2.0), Grade(0.0)))
    env = EnvConfig(environment="x.py:f", reward="sum")
    advantages = compute_advantages([group], AlgoConfig(advantage="grpo_per_turn"), None, 16, env)
    # rewards per turn: a = [1, 0 + (2 - 1)] = [1, 1], b = [0, 0]; returns a = [2, 1], b = [0, 0]
    # grpo per turn over 2 episodes: (x - mean) / (std + eps) = +-1/... with population std
    per_turn = advantages.advantages_P_G_K[0]
    assert per_turn[0, 0] > 0 and per_turn[1, 0] < 0
    torch.testing.assert_close(per_turn[:, 0], -per_turn.flip(0)[:, 0])
    rows = training_rows([group], advantages, mask_truncated=False)
    first = rows[0]
    assert first.token_ids == (1, 2, 5, 6, 8, 9, 10, 7)
    assert first.loss_mask == (True, True, False, False, False, True)
    t0, t1 = float(per_turn[0, 0]), float(per_turn[0, 1])
    assert first.advantages == (t0, t0, 0.0, 0.0, 0.0, t1)
    # mask_cut leaves cut episodes out
    cut = episode([[5]], [], [0.0], finish="max_turns")
    group = RolloutGroup(example, (1, 2), (a, cut), (Grade(1.0), Grade(0.0)))
    advantages = compute_advantages([group], AlgoConfig(), None, 16, env)
    assert len(training_rows([group], advantages, False, mask_cut=True)) == 1
    assert len(training_rows([group], advantages, False, mask_cut=False)) == 2
