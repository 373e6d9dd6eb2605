"""Atomic checkpoints: `checkpoints/step-N/` with the adapter or weights, optimizer and
scheduler state, RNG states, the training position and the resolved config.

A checkpoint is written to a temporary folder and renamed into place, so a killed process
never leaves a half-written `step-N`. Only the last `keep_last` are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from openrft.config import JobConfig, dump_config
from openrft.errors import CheckpointError
from openrft.train.policy import Policy


@dataclass(frozen=True)
class TrainPosition:
    step: int  # RL steps completed
    prompts_seen: int  # position in the stream of shuffled training rows
    val_before: float | None  # validation reward at step 0
    wall_s: float  # training wall time spent before this checkpoint


def save_checkpoint(
    run_dir: Path,
    position: TrainPosition,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: JobConfig,
    keep_last: int,
) -> Path:
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{position.step}"
    tmp = root / f".step-{position.step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save(tmp / "model")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    rng = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    torch.save(rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(position), indent=2))
    dump_config(config, tmp / "config.toml")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    if not root.exists():
        return []
    found = [
        p for p in root.iterdir() if p.name.startswith("step-") and (p / "state.json").exists()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def load_checkpoint(
    path: Path,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainPosition:
    try:
        position = TrainPosition(**json.loads((path / "state.json").read_text()))
        weights_file = "adapter_model.safetensors" if policy.uses_lora else "model.safetensors"
        weights = load_file(path / "model" / weights_file)
    except (OSError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is incomplete or unreadable: {exc}") from exc
    if policy.uses_lora:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(policy.model, weights)
        if getattr(result, "unexpected_keys", None):
            raise CheckpointError(
                f"checkpoint {path} does not match the model: {result.unexpected_keys[:3]}"
            )
    else:
        policy.model.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = torch.load(path / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    return position
