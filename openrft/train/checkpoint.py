"""Atomic checkpoints: `checkpoints/step-N/` with the adapter or weights, optimizer and
scheduler state, RNG states, the training position (with the best-metric bookkeeping), the
validation metric at that step, and the resolved config.

A checkpoint is written to a temporary folder, flushed to disk and renamed into place, so a
killed process never leaves a half-written `step-N`; `checksums.json` holds the SHA-256 of
every file in it, so one damaged later (a truncated copy, a bad disk) is found at resume
(`checkpoint_problem`) and the run resumes from the one before. `prune_checkpoints` keeps the
last `keep_last` and the `keep_best` best by the run's metric.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import math
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from openrft.config import JobConfig, dump_config
from openrft.errors import CheckpointError
from openrft.metrics.writer import disk_free
from openrft.train.policy import Policy


@dataclass(frozen=True)
class TrainPosition:
    step: int  # RL steps completed
    prompts_seen: int  # position in the stream of shuffled training rows
    val_before: float | None  # validation metric at step 0
    wall_s: float  # training wall time spent before this checkpoint
    best_value: float | None = None  # the best validation metric so far
    best_step: int = 0  # the step that reached it
    validations_since_best: int = 0  # validations since then (for early stopping)


@dataclass(frozen=True)
class CheckpointRecord:
    step: int
    path: Path
    metric: float | None  # the run's validation metric at this step; None: not validated


def save_checkpoint(
    run_dir: Path,
    position: TrainPosition,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: JobConfig,
    metric: float | None = None,
) -> Path:
    root = run_dir / "checkpoints"
    final = root / f"step-{position.step}"
    tmp = root / f".step-{position.step}.tmp"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        _write(tmp, position, policy, optimizer, scheduler, config, metric)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
        failure = str(exc)
    # Outside the except block: the traceback, which holds the failed writer and its open
    # file, is gone, so removing the partial copy gives its space back.
    gc.collect()
    shutil.rmtree(tmp, ignore_errors=True)
    earlier = [p.name for p in list_checkpoints(run_dir) if p != final]
    kept = f"{earlier[-1]} is intact" if earlier else "there is no earlier checkpoint"
    raise CheckpointError(
        f"could not write checkpoint {final}: {failure} ({disk_free(root)}); {kept}: "
        "free space and resume the run"
    )


def _write(
    tmp: Path,
    position: TrainPosition,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: JobConfig,
    metric: float | None,
) -> None:
    """Every file of a checkpoint into `tmp`, each flushed to disk, checksums last."""
    policy.save(tmp / "model")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    rng = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    torch.save(rng, tmp / "rng.pt")
    state = {**asdict(position), "metric": metric}
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    dump_config(config, tmp / "config.toml")
    sums = {name: _sha256(tmp / name) for name in _files(tmp)}  # each file flushed to disk
    (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=2, sort_keys=True))
    _flush(tmp / CHECKSUMS)


CHECKSUMS = "checksums.json"


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be trusted (a file missing, truncated or changed
    since it was saved), or None. A checkpoint from before checksums has none to check."""
    try:
        expected = json.loads((path / CHECKSUMS).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return f"{CHECKSUMS} is unreadable: {exc}"
    for name, digest in sorted(expected.items()):
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if _sha256(file, flush=False) != digest:
            return f"{name} does not match its checksum (truncated or changed)"
    return None


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def _sha256(path: Path, flush: bool = True) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
        if flush:
            os.fsync(f.fileno())
    return digest.hexdigest()


def _flush(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    if not root.exists():
        return []
    found = [
        p for p in root.iterdir() if p.name.startswith("step-") and (p / "state.json").exists()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def checkpoint_records(run_dir: Path) -> list[CheckpointRecord]:
    """Every complete checkpoint with the metric it was saved with, oldest first."""
    records = []
    for path in list_checkpoints(run_dir):
        state = _read_state(path)
        metric = state.get("metric")
        records.append(CheckpointRecord(int(path.name[5:]), path, metric))
    return records


def best_checkpoints(
    records: list[CheckpointRecord], keep_best: int, maximize: bool
) -> list[CheckpointRecord]:
    """The `keep_best` best records by metric (ties: the earlier step), best first."""
    ranked = [r for r in records if r.metric is not None and math.isfinite(r.metric)]
    ranked.sort(key=lambda r: (-r.metric if maximize else r.metric, r.step))
    return ranked[:keep_best]


def prune_checkpoints(run_dir: Path, keep_last: int, keep_best: int, maximize: bool) -> None:
    """Delete every checkpoint that is neither among the last `keep_last` nor the best
    `keep_best`."""
    records = checkpoint_records(run_dir)
    keep = {r.step for r in records[-keep_last:]}
    keep |= {r.step for r in best_checkpoints(records, keep_best, maximize)}
    for record in records:
        if record.step not in keep:
            shutil.rmtree(record.path, ignore_errors=True)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is incomplete or unreadable: {exc}") from exc


def load_checkpoint(
    path: Path,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainPosition:
    known = {f.name for f in dataclasses.fields(TrainPosition)}
    try:
        state = _read_state(path)
        position = TrainPosition(**{k: v for k, v in state.items() if k in known})
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
