"""Sampling ahead (rollout.max_off_policy_steps): the schedule and the staleness bound with a
recording sampler, then real jobs on the tiny model: lag metrics, the sampler correction, and
resume semantics (nothing sampled ahead survives a restart; no prompt lost or repeated)."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import pytest

from openrft.errors import ConfigError
from openrft.train.loop import train
from openrft.train.off_policy import RolloutSource
from openrft.train.rollouts import RolloutBatch, Timing
from openrft.types import Example, RolloutGroup
from tests.train.helpers import tiny_job

pytestmark = pytest.mark.usefixtures("one_thread")


class Sampler:
    """Makes step s's batch (two groups, one prompt each) tagged with the version it is told
    the engine holds, and records when each step was sampled."""

    def __init__(self):
        self.version = 0
        self.log: list[tuple[int, int, int]] = []  # (step, prompts_seen, version)
        self.lock = threading.Lock()

    def __call__(self, step: int, prompts_seen: int) -> RolloutBatch:
        with self.lock:
            self.log.append((step, prompts_seen, self.version))
        groups = tuple(
            RolloutGroup(Example(id=f"{prompts_seen + i}", messages=()), (), (), (), self.version)
            for i in range(2)
        )
        return RolloutBatch(groups, (0, 1), 0, 1, 2, Timing(0.0, 0.0))


def run_steps(source: RolloutSource, sampler: Sampler, steps: range) -> list[dict]:
    metrics = []
    for step in steps:
        batch, numbers = source.take(step)
        metrics.append(numbers | {"ids": [g.example.id for g in batch.groups]})
        with source.engine_lock:  # the update's sync
            sampler.version = step
        source.synced_update(step)
    return metrics


def test_synchronous_sampling_happens_when_the_step_asks():
    sampler = Sampler()
    with RolloutSource(sampler, 1, 3, prompts_seen=10) as source:
        metrics = run_steps(source, sampler, range(1, 4))
    assert sampler.log == [(1, 10, 0), (2, 12, 1), (3, 14, 2)]  # always the latest weights
    assert metrics[0] == {"ids": ["10", "11"]}


@pytest.mark.parametrize("lag", [1, 2])
def test_sampling_ahead_stays_within_the_bound(lag):
    sampler = Sampler()
    with RolloutSource(sampler, 1, 6, prompts_seen=0, max_lag=lag) as source:
        metrics = run_steps(source, sampler, range(1, 7))
    steps = [s for s, _, _ in sampler.log]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [seen for _, seen, _ in sampler.log] == [0, 2, 4, 6, 8, 10]  # every prompt once
    for step, _, version in sampler.log:
        assert step - 1 - version <= lag  # sampled by weights at most `lag` updates old
    assert max(m["off_policy/lag_max"] for m in metrics) <= lag
    assert all(m["off_policy/dropped_groups"] == 0 for m in metrics)
    assert [m["ids"] for m in metrics][:2] == [["0", "1"], ["2", "3"]]


def test_groups_past_the_bound_are_dropped_and_counted():
    source = RolloutSource(Sampler(), 1, 1, 0, max_lag=1)
    source.close()
    old = RolloutGroup(Example(id="old", messages=()), (), (), (), 0)
    new = replace(old, example=Example(id="new", messages=()), policy_version=3)
    batch = RolloutBatch((old, new), (0, 1), 0, 1, 2, Timing(0.0, 0.0))
    kept, metrics = source._within_lag(5, batch)  # trainer at version 4: lags 4 and 1
    assert [g.example.id for g in kept.groups] == ["new"]
    assert metrics["off_policy/dropped_groups"] == 1
    assert metrics["off_policy/lag_max"] == 1


def test_a_failing_sampler_fails_the_step_that_waits_for_it():
    def broken(step, seen):
        raise RuntimeError("engine crashed")

    with (
        RolloutSource(broken, 1, 3, 0, max_lag=1) as source,
        pytest.raises(RuntimeError, match="engine crashed"),
    ):
        source.take(1)


def metrics_of(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("step", 0) > 0 and "reward/mean" in r]


def rollouts_of(run_dir):
    lines = (run_dir / "rollouts.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_an_off_policy_job_logs_its_lag_and_corrects_for_it(tmp_path, tiny_model_dir):
    config = tiny_job(tmp_path, tiny_model_dir, "rollout.max_off_policy_steps=1",
                      "train.max_steps=4")  # fmt: skip
    train(config, tmp_path / "run", show_progress=False)
    records = metrics_of(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["off_policy/lag_max"] for r in records] == [0, 1, 1, 1]
    assert all(r["off_policy/dropped_groups"] == 0 for r in records)
    # The sampler's log-probs came with the rollouts: the mismatch is measured and corrected.
    assert all(r["rollout/sampler_kl"] is not None for r in records)
    versions = {(r["step"], r["policy_version"]) for r in rollouts_of(tmp_path / "run")}
    assert versions == {(1, 0), (2, 0), (3, 1), (4, 2)}


def test_resume_samples_from_the_checkpoint_and_loses_no_prompt(tmp_path, tiny_model_dir):
    settings = ("rollout.max_off_policy_steps=1", "eval.interval=0")
    whole = tiny_job(tmp_path, tiny_model_dir, *settings, "train.max_steps=4")
    train(whole, tmp_path / "whole", show_progress=False)
    first = replace(whole, train=replace(whole.train, max_steps=2))
    train(first, tmp_path / "resumed", show_progress=False)
    train(whole, tmp_path / "resumed", resume=True, show_progress=False)

    def prompts(run):
        return [(r["step"], r["example_id"]) for r in rollouts_of(tmp_path / run)]

    assert prompts("resumed") == prompts("whole")  # the same prompts, each step once
    resumed = {r["step"]: r["policy_version"] for r in rollouts_of(tmp_path / "resumed")}
    # Step 3 was sampled ahead by update 1 in the uninterrupted run; after the restart it is
    # sampled by the checkpoint's weights (update 2), never by older ones.
    assert resumed[3] == 2
    assert {r["step"]: r["policy_version"] for r in rollouts_of(tmp_path / "whole")}[3] == 1
    assert [r["step"] for r in metrics_of(tmp_path / "resumed")] == [1, 2, 3, 4]


def test_sampling_ahead_on_the_trainers_own_weights_is_refused(tmp_path, tiny_model_dir):
    config = tiny_job(tmp_path, tiny_model_dir, "rollout.max_off_policy_steps=1",
                      'rollout.decoder="transformers"')  # fmt: skip
    with pytest.raises(ConfigError, match="own copy of the weights"):
        train(config, tmp_path / "run", show_progress=False)
