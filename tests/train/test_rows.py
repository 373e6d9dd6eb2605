"""From graded groups to rows: training rewards (validity masks, error_score, DAPO's overlong
penalty), advantages by estimator, the rows, and dynamic sampling's drop-and-resample."""

from __future__ import annotations

import pytest
import torch

from openrft.config import AlgoConfig
from openrft.models.load import load_model
from openrft.rollout.hf_engine import HFEngine
from openrft.train.rollouts import collect_batch
from openrft.train.rows import compute_advantages, no_signal, training_rewards, training_rows
from openrft.types import Completion, Example, Grade, RolloutGroup, Sample, SamplingParams

EXAMPLE = Example(id="e", messages=({"role": "user", "content": "hi"},))


def group(scores, lengths=None, reasons=None, version=3) -> RolloutGroup:
    lengths = lengths or [2] * len(scores)
    reasons = reasons or ["stop"] * len(scores)
    completions = tuple(
        Completion(tuple(range(4, 4 + n)), "x", reason)
        for n, reason in zip(lengths, reasons, strict=True)
    )
    grades = tuple(Grade.failed("runtime_error", "boom") if s is None else Grade(s) for s in scores)
    return RolloutGroup(EXAMPLE, (1, 2, 3), completions, grades, version)


def test_failed_grades_are_invalid_not_zero_unless_error_score_says():
    groups = [group([1.0, 0.0, None])]
    rewards = training_rewards(groups, AlgoConfig(), error_score=None, max_new_tokens=8)
    assert rewards.valid_P_G.tolist() == [[True, True, False]]
    assert not rewards.rewards_P_G.isnan().any()
    scored = training_rewards(groups, AlgoConfig(), error_score=-1.0, max_new_tokens=8)
    assert scored.valid_P_G.all() and scored.rewards_P_G.tolist() == [[1.0, 0.0, -1.0]]


def test_the_overlong_penalty_by_hand():
    # max 10 tokens, buffer 4: from 7 tokens on, -(L - 6) / 4; at the cap -1 x penalty 0.5.
    algo = AlgoConfig(overlong_buffer=4, overlong_penalty=0.5)
    rewards = training_rewards([group([1.0] * 4, [5, 6, 8, 10])], algo, None, max_new_tokens=10)
    assert rewards.penalty_P_G.tolist() == [[0.0, 0.0, -0.25, -0.5]]
    assert rewards.rewards_P_G.tolist() == [[1.0, 1.0, 0.75, 0.5]]
    assert rewards.shaped


@pytest.mark.parametrize(
    ("advantage", "expected"),
    [
        ("grpo", [1.0, -1.0, 1.0, -1.0]),  # mean 0.5, std 0.5
        ("drgrpo", [0.5, -0.5, 0.5, -0.5]),
        ("rloo", [2 / 3, -2 / 3, 2 / 3, -2 / 3]),  # 1 - 1/3 and 0 - 2/3
        ("grpo_per_turn", [1.0, -1.0, 1.0, -1.0]),  # one turn: grpo
    ],
)
def test_advantages_by_the_named_estimator(advantage, expected):
    groups = [group([1.0, 0.0, 1.0, 0.0])]
    advantages = compute_advantages(groups, AlgoConfig(advantage=advantage), None, 8)
    assert advantages.advantages_P_G_K.shape == (1, 4, 1)
    torch.testing.assert_close(
        advantages.advantages_P_G_K[0, :, 0], torch.tensor(expected, dtype=torch.float64),
        atol=1e-5, rtol=0,
    )  # fmt: skip


def test_rows_carry_per_token_advantages_and_leave_out_what_they_must():
    groups = [group([1.0, 0.0, None, 0.5], lengths=[2, 3, 2, 4], reasons=["stop", "length"] * 2)]
    advantages = compute_advantages(groups, AlgoConfig(), None, 8)
    rows = training_rows(groups, advantages, mask_truncated=False)
    assert [len(r.response) for r in rows] == [2, 3, 4]  # the failed grade is left out
    first = advantages.advantages_P_G_K[0, 0, 0].item()
    assert rows[0].advantages == (first, first) and all(rows[0].loss_mask)
    assert rows[0].token_ids == (1, 2, 3, 4, 5) and rows[0].policy_version == 3
    assert advantages.of_group(0)[2] is None
    truncated_out = training_rows(groups, advantages, mask_truncated=True)
    assert [len(r.response) for r in truncated_out] == [2]


def test_no_signal_marks_the_groups_dynamic_sampling_drops():
    groups = [group([1.0, 1.0]), group([1.0, 0.0]), group([0.5, None]), group([None, None])]
    assert no_signal(groups, AlgoConfig(), None, 8) == [True, False, True, True]
    # As in DAPO, the grades decide: lengths the overlong penalty tells apart do not.
    shaped = AlgoConfig(overlong_buffer=4)
    assert no_signal([group([1.0, 1.0], [2, 8]), group([1.0, 0.0], [8, 8])], shaped, None, 8) == [
        True,
        False,
    ]


class ByPrompt:
    """Scores that depend on the prompt only for even rows (a flat group: no signal) and on
    the sample for odd rows."""

    name = "by-prompt"

    def grade(self, samples: list[Sample]) -> list[Grade]:
        grades = []
        for sample in samples:
            row = int(sample.example_id)
            grades.append(Grade(1.0 if row % 2 == 0 else float(len(sample.response) % 2)))
        return grades


class Stream:
    def __init__(self, tokenizer, prompts: int = 40):
        self.examples = [
            Example(id=str(i), messages=({"role": "user", "content": f"row {i}"},))
            for i in range(prompts)
        ]
        self.ids = [tokenizer.encode(f"row {i}") for i in range(prompts)]
        self.taken: list[tuple[int, int]] = []

    def take(self, offset: int, count: int):
        self.taken.append((offset, count))
        return self.examples[offset : offset + count], self.ids[offset : offset + count]


def test_dynamic_sampling_drops_flat_groups_and_samples_more(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir))
    engine = HFEngine(model, tokenizer, batch_size=16)
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=6, seed=1)
    algo = AlgoConfig(dynamic_sampling=True)

    def flat(groups):
        return no_signal(groups, algo, None, 6)

    stream = Stream(tokenizer)
    batch = collect_batch(engine, ByPrompt(), stream, params, size=4, max_rounds=3, flat=flat)
    # Even rows are flat: the first round keeps at most 2 of 4; the next asks for the rest
    # divided by the keep rate so far.
    assert stream.taken[0] == (0, 4) and batch.rounds >= 2
    assert batch.dropped >= 2 and batch.dynamic
    kept = [int(g.example.id) for g in batch.groups]
    assert len(kept) <= 4 and all(row % 2 == 1 for row in kept)
    assert batch.prompts_used == sum(count for _, count in stream.taken)
    assert len(batch.sampled) == batch.prompts_used
    # Without dynamic sampling every group is trained on, flat or not.
    plain = collect_batch(engine, ByPrompt(), Stream(tokenizer), params, 4, 1, flat)
    assert plain.rounds == 1 and plain.dropped == 0 and len(plain.groups) == 4
    assert not plain.dynamic and plain.timing.rollout_s > 0
