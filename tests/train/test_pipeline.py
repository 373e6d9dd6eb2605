"""Grading beside generation (openrft.train.pipeline): the timing arithmetic by hand, the
engine's `on_group` hand-off on the tiny model with both decoders, thread-safety limits,
failures still counted, and a job's rewards unchanged by pipelining."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence

import pytest
import torch

from openrft.models.load import load_model
from openrft.rollout.hf_engine import HFEngine
from openrft.train.loop import train
from openrft.train.pipeline import GradingPipeline, GradingPlan, busy_time, exposed_time
from openrft.train.rollouts import collect_groups
from openrft.types import Completion, Example, Grade, Sample, SamplingParams
from tests.train.helpers import tiny_job

pytestmark = pytest.mark.usefixtures("one_thread")


def test_busy_time_is_the_union_of_the_intervals():
    assert busy_time([]) == 0
    assert busy_time([(0, 2), (1, 3), (5, 6)]) == pytest.approx(4.0)  # [0,3] + [5,6]
    assert busy_time([(0, 10), (2, 3)]) == pytest.approx(10.0)  # nested
    assert busy_time([(4, 5), (0, 1)]) == pytest.approx(2.0)  # unsorted


def test_exposed_time_counts_only_what_runs_after_generation():
    intervals = [(0, 2), (1, 3), (5, 6)]
    assert exposed_time(intervals, generated_at=2.5) == pytest.approx(1.5)  # 0.5 + 1
    assert exposed_time(intervals, generated_at=6) == 0
    assert exposed_time(intervals, generated_at=0) == pytest.approx(busy_time(intervals))


class Recording:
    """A grader that sleeps and records how many of its calls ran at once."""

    name = "recording"

    def __init__(self, seconds: float, thread_safe: bool):
        self.seconds, self.thread_safe = seconds, thread_safe
        self.running = self.most = 0
        self.lock = threading.Lock()
        self.started: list[float] = []

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.started.append(time.monotonic())
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        return [Grade(score=float(len(s.response)), components={}) for s in samples]


def samples_of(index: int, count: int = 2) -> list[Sample]:
    return [
        Sample(id=f"{index}:{k}", messages=({"role": "assistant", "content": "x" * k},))
        for k in range(count)
    ]


@pytest.mark.parametrize(("thread_safe", "most"), [(False, 1), (True, 4)])
def test_a_grader_runs_in_as_many_threads_as_it_allows(thread_safe, most):
    grader = Recording(0.2, thread_safe)
    with GradingPipeline(grader, workers=4) as pipeline:
        for index in range(4):
            pipeline.submit(index, samples_of(index))
        pipeline.generation_done()
        grades, timing = pipeline.results(4)
    assert grader.most == most
    assert [[g.score for g in group] for group in grades] == [[0.0, 1.0]] * 4
    assert timing.busy_s >= 0.2 * (4 // most) - 0.05


def test_a_group_given_twice_or_never_is_an_error():
    with GradingPipeline(Recording(0, True)) as pipeline:
        pipeline.submit(0, samples_of(0))
        with pytest.raises(ValueError, match="twice"):
            pipeline.submit(0, samples_of(0))
        with pytest.raises(ValueError, match=r"\[1\]"):
            pipeline.results(2)


def test_a_raising_grader_fails_its_samples_not_the_step():
    class Broken:
        name = "broken"

        def grade(self, samples):
            raise RuntimeError("lambda down")

    with GradingPipeline(Broken()) as pipeline:
        pipeline.submit(0, samples_of(0))
        grades, _ = pipeline.results(1)
    assert [g.error.kind for g in grades[0]] == ["runtime_error", "runtime_error"]
    assert "lambda down" in grades[0][0].error.message


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir))
    return model.eval(), tokenizer


@pytest.mark.parametrize("decoder", ["compact", "transformers"])
def test_the_engine_hands_each_group_on_once_as_soon_as_it_is_done(loaded, decoder):
    model, tokenizer = loaded
    engine = HFEngine(model, tokenizer, batch_size=8, decoder=decoder)
    # Half the vocabulary ends a turn: samples stop after a few tokens, at different steps.
    engine.end_token_ids = frozenset(range(0, tokenizer.vocab_size, 2))
    steps = 0
    step = engine.decoder.step

    def counted(*args, **kwargs):
        nonlocal steps
        steps += 1
        return step(*args, **kwargs)

    engine.decoder.step = counted
    prompts = [tokenizer.encode(t) for t in ["the movie", "a dull film", "what is 12", "0 1 2"]]
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=40, seed=3)
    handed: dict[int, tuple[int, list[Completion]]] = {}

    def on_group(index: int, group: list[Completion]) -> None:
        assert index not in handed
        handed[index] = (steps, group)

    groups = engine.generate(prompts, params, on_group=on_group)
    assert sorted(handed) == [0, 1, 2, 3]  # two chunks of two prompts, indices global
    assert [handed[i][1] for i in range(4)] == groups
    assert groups == engine.generate(prompts, params)  # the same samples without it
    # Within a chunk, a group all of whose samples stopped is handed on before the chunk ends.
    first_chunk = [handed[0][0], handed[1][0]]
    assert min(first_chunk) < max(handed[i][0] for i in range(4))
    assert all(c.finish_reason == "stop" for g in groups for c in g)


def test_grading_overlaps_generation(loaded):
    """A slow grader is busy while later groups generate: less of it is exposed."""
    model, tokenizer = loaded
    engine = HFEngine(model, tokenizer, batch_size=4, decoder="compact")  # one prompt a chunk
    prompts = [tokenizer.encode(f"say {i}") for i in range(4)]
    examples = [Example(id=str(i), messages=({"role": "user", "content": "x"},)) for i in range(4)]
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=48, seed=1)
    started = time.monotonic()
    engine.generate(prompts, params)
    generation_s = time.monotonic() - started
    delay = min(max(generation_s / 4, 0.05), 1.0)  # about one chunk's generation per group
    results = {}
    for pipelined in (False, True):
        grader = Recording(delay, thread_safe=True)
        groups, timing = collect_groups(
            engine, examples, prompts, params, grader, grading=GradingPlan(pipelined, 4)
        )
        results[pipelined] = ([g.grades for g in groups], timing)
    serial, pipelined = results[False][1], results[True][1]
    assert results[False][0] == results[True][0]
    assert serial.reward_exposed_s == pytest.approx(serial.reward_s, abs=0.02)
    assert pipelined.reward_exposed_s < serial.reward_exposed_s


def test_a_job_logs_exposed_grading_and_pipelining_changes_no_reward(tmp_path, tiny_model_dir):
    logs = {}
    for pipeline in ("true", "false"):
        (tmp_path / pipeline).mkdir()
        config = tiny_job(tmp_path / pipeline, tiny_model_dir, f"reward.pipeline={pipeline}",
                          "train.max_steps=2", "eval.interval=0")  # fmt: skip
        torch.manual_seed(0)
        train(config, tmp_path / pipeline / "run", show_progress=False)
        lines = (tmp_path / pipeline / "run" / "metrics.jsonl").read_text().splitlines()
        logs[pipeline] = [json.loads(line) for line in lines if '"step"' in line]
    steps = [r for r in logs["true"] if "time/reward_exposed_s" in r]
    assert len(steps) == 2
    assert all(0 <= r["time/reward_exposed_s"] <= r["time/reward_s"] + 1e-6 for r in steps)
    rewards = {k: [r.get("reward/mean") for r in v if "reward/mean" in r] for k, v in logs.items()}
    assert rewards["true"] == rewards["false"]
