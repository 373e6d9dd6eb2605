"""The scenarios of test_data_parallel and the rank process that runs them.

    RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 \
        python tests/train/data_parallel_worker.py MODEL_DIR OUT_DIR

Each rank joins the gloo group as torchrun would start it and runs every scenario the way a
job does: rank 0 sends the rows (`lead_update`), the others `follow` (or, in the uneven
scenario, both call update_policy directly), and each rank saves its gradients before every
optimizer step, its weights after the update and its stats to OUT_DIR/<scenario>-<rank>.pt.
The test runs the same scenario in one process (`record`) and compares.
"""

from __future__ import annotations

import copy
import random
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import peft
import torch
from transformers import AutoModelForCausalLM

from openrft.config import AlgoConfig, TrainConfig
from openrft.train import data_parallel as dp
from openrft.train.forward import packed_row_logprobs, plain_row_logprobs
from openrft.train.optim import build_optimizer
from openrft.train.policy import Policy
from openrft.train.update import UpdateStats, update_policy
from openrft.types import TrainRow

FORWARDS = {"packed": packed_row_logprobs, "plain": plain_row_logprobs}
MAX_COMPLETION_TOKENS = 12


def make_rows(count: int, seed: int, zero_advantage: tuple[int, ...] = ()) -> tuple:
    """GRPO-like rows: groups of 3 sharing a prompt, responses of 1 to 9 tokens with some
    untrained (environment) tokens, one advantage per row, engine log-probs on every other
    row (NaN on its untrained tokens); rows in `zero_advantage` carry no signal."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        if i % 3 == 0:
            prompt = tuple(rng.randrange(3, 300) for _ in range(rng.randint(2, 6)))
        length = rng.randint(1, 9)
        response = tuple(rng.randrange(3, 300) for _ in range(length))
        mask = tuple(j == 0 or rng.random() < 0.7 for j in range(length))
        advantage = 0.0 if i in zero_advantage else rng.uniform(-1.5, 1.5)
        sampler = None
        if i % 2:
            sampler = tuple(-rng.uniform(2, 8) if m else float("nan") for m in mask)
        rows.append(
            TrainRow(
                prompt + response,
                len(prompt),
                mask,
                tuple(advantage * m for m in mask),
                sampler_logprobs=sampler,
            )
        )
    return tuple(rows)


@dataclass(frozen=True)
class Scenario:
    lora: bool
    rows: tuple[TrainRow, ...]
    forward: str  # a FORWARDS key
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            micro_batch_size=2, mini_batches=2, learning_rate=1e-3, weight_decay=0.01
        )
    )
    follow: bool = True  # rank 1 runs dp.follow; else both ranks call update_policy


SCENARIOS = {
    # 12 rows, 2 mini-batches of 6: one process runs 3 micro-batches each, a rank 2 (2 + 1).
    "lora": Scenario(
        lora=True,
        rows=make_rows(12, seed=1, zero_advantage=(4,)),
        forward="packed",
        algo=AlgoConfig(loss_aggregation="sequence_mean", kl_coef=0.05, entropy_coef=0.01),
    ),
    # Full fine-tuning with a tight clip: the global norm decides the scale.
    "full": Scenario(
        lora=False,
        rows=make_rows(12, seed=2, zero_advantage=(2, 7)),
        forward="plain",
        algo=AlgoConfig(update_epochs=2),
        train=TrainConfig(
            micro_batch_size=2, mini_batches=2, learning_rate=1e-3, max_grad_norm=0.05
        ),
    ),
    # 5 rows on 2 ranks: mini-batches of 3 (ranks train 2 and 1 rows) and 2 of which one has
    # no signal (rank 1 trains none, yet joins every all-reduce).
    "uneven": Scenario(
        lora=True,
        rows=make_rows(5, seed=3, zero_advantage=(4,)),
        forward="packed",
        algo=AlgoConfig(loss_aggregation="constant", policy_loss="cispo"),
        follow=False,
    ),
}


def build(
    scenario: Scenario, model_dir: Path, seed: int = 0
) -> tuple[Policy, torch.optim.Optimizer, object]:
    """The scenario's policy (float64; a LoRA adapter initialised from `seed`) and optimizer."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    if scenario.lora:
        # Random A and B (not peft's B = 0): the first step then moves both.
        config = peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        )
        policy = Policy(peft.get_peft_model(model, config), tokenizer=None, uses_lora=True)
    else:
        reference = copy.deepcopy(model).requires_grad_(False) if scenario.algo.kl_coef else None
        policy = Policy(model, tokenizer=None, uses_lora=False, frozen_reference=reference)
    optimizer, scheduler = build_optimizer(policy.trainable_parameters(), scenario.train, 8)
    return policy, optimizer, scheduler


def record(policy: Policy, optimizer: torch.optim.Optimizer, update: Callable) -> dict:
    """What `update()` did: the trained weights before and after it, the gradients each
    optimizer step saw (after the all-reduce and the clip), and its stats (None when it
    returns none)."""
    named = [(n, p) for n, p in policy.model.named_parameters() if p.requires_grad]
    start = {n: p.detach().clone() for n, p in named}
    grads: list[dict] = []
    hook = optimizer.register_step_pre_hook(
        lambda *_: grads.append({n: p.grad.clone() for n, p in named if p.grad is not None})
    )
    stats = update()
    hook.remove()
    return {
        "start": start,
        "grads": grads,
        "params": {n: p.detach().clone() for n, p in named},
        "stats": asdict(stats) if isinstance(stats, UpdateStats) else None,
    }


def run_scenario(scenario: Scenario, model_dir: Path, group: dp.DataParallel | None) -> dict:
    if group is None:
        policy, optimizer, scheduler = build(scenario, model_dir)
        forward = FORWARDS[scenario.forward]
    else:  # set up as a job would: each rank's own adapter init, then the lead's everywhere
        policy, optimizer, scheduler = build(scenario, model_dir, seed=group.rank)
        dp.broadcast_parameters(policy.trainable_parameters(), group)
        forward = dp.broadcast_object(FORWARDS[scenario.forward] if group.is_lead else None, group)
    args = (optimizer, scheduler, scenario.algo, scenario.train, MAX_COMPLETION_TOKENS, forward)
    if group is None:
        return record(policy, optimizer, lambda: update_policy(policy, scenario.rows, *args))
    if not scenario.follow:
        rows = dp.broadcast_rows(scenario.rows if group.is_lead else None, group)
        return record(
            policy, optimizer, lambda: update_policy(policy, rows, *args, data_parallel=group)
        )
    if group.is_lead:

        def lead() -> UpdateStats:
            stats = dp.lead_update(policy, scenario.rows, *args, group, verify_weights=True)
            dp.stop_followers(group)
            return stats

        return record(policy, optimizer, lead)
    return record(policy, optimizer, lambda: dp.follow(policy, *args, group, verify_weights=True))


def main(model_dir: Path, out_dir: Path) -> None:
    torch.set_num_threads(1)
    # A bug that leaves one rank out of a collective fails within seconds instead of hanging.
    group = dp.init_data_parallel(torch.device("cpu"), timeout=timedelta(seconds=60))
    assert group is not None and group.device == torch.device("cpu")
    for name, scenario in SCENARIOS.items():
        result = run_scenario(scenario, model_dir, group)
        torch.save(result, out_dir / f"{name}-{group.rank}.pt")
    group.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
