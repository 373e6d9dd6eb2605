"""Data-parallel RL updates over torch.distributed: every rank holds the whole policy, trains
on its shard of each mini-batch, and the gradients are summed over the ranks before clipping,
so every rank takes the optimizer step one process would take on the whole batch and the
weights stay identical (docs/data-parallel.md).

One job under torchrun: rank 0 (the lead) rolls out, grades and builds the step's rows, then
`lead_update` sends them to the other ranks and updates; the other ranks run `follow` until
the lead calls `stop_followers`. Gloo on the CPU, NCCL when the policy is on a GPU. A single
process has no `DataParallel` at all (`init_data_parallel` returns None), and
`update_policy(..., data_parallel=None)` is the plain update.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from openrft.config import AlgoConfig, TrainConfig
from openrft.train.forward import RowForward
from openrft.train.policy import Policy
from openrft.train.update import UpdateStats, update_policy
from openrft.types import TrainRow

# A follower waits inside a broadcast through the lead's whole rollout, grading, validation
# and checkpoint, so the collective timeout must outlast the longest step; a real deadlock
# surfaces only after it.
STEP_TIMEOUT = timedelta(hours=2)
# Gradients travel in flat buckets of at most this many elements: one collective per bucket
# instead of one per parameter, with a bounded extra copy (128 MB of float32).
BUCKET_ELEMENTS = 32 * 1024 * 1024


@dataclass(frozen=True)
class DataParallel:
    """This process's place in the default process group."""

    rank: int
    world_size: int
    device: torch.device  # where this rank's policy lives: cuda:LOCAL_RANK (NCCL) or cpu (gloo)

    @property
    def is_lead(self) -> bool:
        """Rank 0: the one that rolls out, grades, logs and saves."""
        return self.rank == 0

    def shard(self, items: Sequence[int]) -> list[int]:
        """The row indices of `items` this rank trains on."""
        return shard(items, self.rank, self.world_size)

    def all_reduce_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """Sum each parameter's gradient over the ranks, in place. The loss is normalised by
        whole-mini-batch counts, so the sum is one process's gradient on the whole mini-batch.
        A rank without rows (or whose rows did not reach a parameter) adds zeros; a parameter
        no rank reached keeps grad None on every rank, as in one process (the optimizer skips
        it, weight decay included)."""
        reached = torch.tensor(
            [float(p.grad is not None) for p in params], dtype=torch.float64, device=self.device
        )
        dist.all_reduce(reached)
        used = [p for p, count in zip(params, reached.tolist(), strict=True) if count > 0]
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets([p.grad for p in used], BUCKET_ELEMENTS):
            if len(bucket) == 1 and bucket[0].is_contiguous():
                dist.all_reduce(bucket[0])  # a large tensor alone: no flat copy
                continue
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            for grad, part in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
                grad.copy_(part.view_as(grad))

    def all_reduce_sums(self, values: Sequence[float]) -> list[float]:
        """Each value summed over the ranks (float64): token counts and metric sums."""
        total = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.tolist()

    def close(self) -> None:
        dist.destroy_process_group()


def shard(items: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank `rank`'s contiguous share of `items`: shares differ in size by at most one (the
    earlier ranks take the extra ones), and concatenated in rank order they are `items`.
    Contiguous keeps a GRPO group's rows together, so the packed forward computes their
    prompt once per rank rather than once per row."""
    base, extra = divmod(len(items), world_size)
    start = rank * base + min(rank, extra)
    return list(items[start : start + base + (rank < extra)])


def torchrun_place(environ: Mapping[str, str]) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's variables; None for a single process
    (no WORLD_SIZE, or 1)."""
    world_size = int(environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    return int(environ["RANK"]), world_size, int(environ.get("LOCAL_RANK", "0"))


def init_data_parallel(
    device: torch.device, timeout: timedelta = STEP_TIMEOUT
) -> DataParallel | None:
    """Join torchrun's process group (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT),
    or None when this is the only process. `device` is where the policy would live alone
    (`policy.resolve_device(config.model.device)`): on CUDA the backend is NCCL and this rank
    takes GPU LOCAL_RANK as its current device (so "cuda" means that GPU from here on); else
    gloo on the CPU. Call it before building the policy."""
    place = torchrun_place(os.environ)
    if place is None:
        return None
    rank, world_size, local_rank = place
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        backend, device = "nccl", torch.device("cuda", local_rank)
    else:
        backend, device = "gloo", torch.device("cpu")
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)
    return DataParallel(rank, world_size, device)


def broadcast_object(value: Any, data_parallel: DataParallel) -> Any:
    """The lead's `value` on every rank (pickled; the others' `value` is ignored): setup
    choices such as the forward `choose_forward` picked (functions pickle by name)."""
    box = [value if data_parallel.is_lead else None]
    dist.broadcast_object_list(box, src=0, device=data_parallel.device)
    return box[0]


def broadcast_rows(
    rows: Sequence[TrainRow] | None, data_parallel: DataParallel
) -> list[TrainRow] | None:
    """The step's rows from the lead on every rank; None (sent by `stop_followers`) ends
    `follow`. The others pass None."""
    sent = None if rows is None else list(rows)
    return broadcast_object(sent, data_parallel)


def broadcast_parameters(params: Sequence[torch.Tensor], data_parallel: DataParallel) -> None:
    """Overwrite every rank's `params` with the lead's, once at job start: a randomly
    initialised LoRA adapter is then the same everywhere whatever each rank's seed."""
    for param in params:
        dist.broadcast(param.detach(), src=0)


def lead_update(
    policy: Policy,
    rows: Sequence[TrainRow],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    algo: AlgoConfig,
    train: TrainConfig,
    max_completion_tokens: int,
    forward: RowForward,
    data_parallel: DataParallel,
    verify_weights: bool = False,
) -> UpdateStats:
    """The lead's update_policy: sends `rows` to the followers, updates on its shard and
    returns the whole batch's stats. `verify_weights` must match the followers'."""
    broadcast_rows(rows, data_parallel)
    return _update(
        policy, rows, optimizer, scheduler, algo, train, max_completion_tokens, forward,
        data_parallel, verify_weights,
    )  # fmt: skip


def follow(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    algo: AlgoConfig,
    train: TrainConfig,
    max_completion_tokens: int,
    forward: RowForward,
    data_parallel: DataParallel,
    verify_weights: bool = False,
) -> int:
    """A follower's whole job: receive each step's rows and update on its shard, until the
    lead calls `stop_followers`. Returns the number of updates."""
    updates = 0
    while (rows := broadcast_rows(None, data_parallel)) is not None:
        _update(
            policy, rows, optimizer, scheduler, algo, train, max_completion_tokens, forward,
            data_parallel, verify_weights,
        )  # fmt: skip
        updates += 1
    return updates


def stop_followers(data_parallel: DataParallel) -> None:
    """The lead's last call: every `follow` returns."""
    broadcast_rows(None, data_parallel)


def weights_checksum(model: nn.Module) -> torch.Tensor:
    """Per parameter, its sum and its sum of squares (float64): equal on ranks whose weights
    are equal, and a drift in either moves them."""
    values = [p.detach().double() for p in model.parameters()]
    return torch.stack([s for v in values for s in (v.sum(), v.square().sum())])


def assert_same_weights(model: nn.Module, data_parallel: DataParallel) -> None:
    """Raise RuntimeError naming the parameters whose checksum differs between ranks (every
    rank calls it at the same point; a debug check, a pass over the weights)."""
    local = weights_checksum(model).to(data_parallel.device)
    extremes = torch.cat([local, -local])  # one MAX gives the largest and the smallest
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
    spread = (extremes[: len(local)] + extremes[len(local) :]).view(-1, 2).amax(dim=1)
    names = [name for name, _ in model.named_parameters()]
    differ = [name for name, gap in zip(names, spread.tolist(), strict=True) if gap > 0]
    if differ:
        raise RuntimeError(
            f"data-parallel ranks hold different weights after an update ({len(differ)} "
            f"parameters differ, e.g. {differ[:3]}): rank {data_parallel.rank}"
        )


def _update(
    policy: Policy,
    rows: Sequence[TrainRow],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    algo: AlgoConfig,
    train: TrainConfig,
    max_completion_tokens: int,
    forward: RowForward,
    data_parallel: DataParallel,
    verify_weights: bool,
) -> UpdateStats:
    stats = update_policy(
        policy, rows, optimizer, scheduler, algo, train, max_completion_tokens, forward,
        data_parallel=data_parallel,
    )  # fmt: skip
    if verify_weights:
        assert_same_weights(policy.model, data_parallel)
    return stats


def _buckets(tensors: Sequence[torch.Tensor], limit: int) -> Iterator[list[torch.Tensor]]:
    """Consecutive tensors grouped by dtype and device, each group up to `limit` elements (a
    larger tensor alone)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for tensor in tensors:
        same_kind = not bucket or (
            tensor.dtype == bucket[0].dtype and tensor.device == bucket[0].device
        )
        if bucket and (not same_kind or size + tensor.numel() > limit):
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += tensor.numel()
    if bucket:
        yield bucket
