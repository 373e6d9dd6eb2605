"""A job trained by a data-parallel group under torchrun (openrft.train.data_parallel):

    torchrun --nproc-per-node 2 -m openrft.cli train job.toml

Rank 0, the lead, runs the whole job (`openrft.train.loop.train`): rollouts, grading,
validation, logs and checkpoints, with `lead_update` in place of the plain update. Every
other rank runs `follow_job`: the same policy and optimizer built from the same config, the
lead's weights and (on resume) the same checkpoint's optimizer state, then one update on its
shard per step until the lead is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from openrft.config import JobConfig
from openrft.train.checkpoint import load_checkpoint
from openrft.train.data_parallel import (
    DataParallel,
    broadcast_object,
    broadcast_parameters,
    follow,
)
from openrft.train.forward import RowForward
from openrft.train.optim import build_optimizer
from openrft.train.policy import Policy, build_policy


@dataclass(frozen=True)
class GroupSetup:
    """What the followers learn from the lead before the first step."""

    steps: int  # the job's RL steps (sizes the learning-rate schedule)
    forward: RowForward  # the update's forward, as the lead chose it
    checkpoint: str | None  # the checkpoint the lead resumed from: its optimizer state


def optimizer_steps(config: JobConfig, steps: int) -> int:
    return steps * config.algo.update_epochs * config.train.mini_batches


def share_setup(
    data_parallel: DataParallel,
    policy: Policy,
    steps: int,
    forward: RowForward,
    checkpoint: Path | None,
) -> None:
    """The lead's half of the start: the setup, then its (restored) weights to every rank."""
    setup = GroupSetup(steps, forward, None if checkpoint is None else str(checkpoint))
    broadcast_object(setup, data_parallel)
    broadcast_parameters(policy.trainable_parameters(), data_parallel)


def follow_job(config: JobConfig, data_parallel: DataParallel) -> int:
    """A follower's whole job; returns the number of updates it took part in."""
    policy = build_policy(config)
    setup: GroupSetup = broadcast_object(None, data_parallel)
    optimizer, scheduler = build_optimizer(
        policy.trainable_parameters(), config.train, optimizer_steps(config, setup.steps)
    )
    if setup.checkpoint is not None:  # Adam's moments and the schedule's position
        load_checkpoint(Path(setup.checkpoint), policy, optimizer, scheduler)
    broadcast_parameters(policy.trainable_parameters(), data_parallel)
    try:
        return follow(
            policy, optimizer, scheduler, config.algo, config.train,
            config.rollout.max_new_tokens, setup.forward, data_parallel,
        )  # fmt: skip
    finally:
        data_parallel.close()
