"""AdamW and the learning-rate schedule: linear warm-up, then constant or cosine decay."""

from __future__ import annotations

import math

import torch

from openrft.config import TrainConfig


def build_optimizer(
    params: list[torch.nn.Parameter], train: TrainConfig, total_optimizer_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(
        params,
        lr=train.learning_rate,
        betas=(train.adam_beta1, train.adam_beta2),
        weight_decay=train.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_multiplier(
            step, train.warmup_steps, total_optimizer_steps, train.lr_schedule, train.min_lr_ratio
        ),
    )
    return optimizer, scheduler


def lr_multiplier(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Fraction of the peak learning rate at optimizer step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
