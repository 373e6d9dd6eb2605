"""Live progress for a training run: a rich progress bar (step, reward, validation, ETA) on a
terminal, and one plain line per step otherwise (job logs, CI)."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(self, total: int, done: int, val_before: float | None, enabled: bool = True):
        self.total = total
        self.enabled = enabled
        self.val = val_before
        self.started = time.monotonic()
        self.first_step = done
        self.console = Console(stderr=True)
        self.bar = None
        if enabled and self.console.is_terminal:
            self.bar = RichProgress(
                TextColumn("[bold]step"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("reward {task.fields[reward]}  val {task.fields[val]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.bar.add_task(
                "train", total=total, completed=done, reward="-", val=_fmt(val_before)
            )
            self.bar.start()
        elif enabled:
            print(
                f"openrft: starting at step {done}/{total}, validation reward {_fmt(val_before)}",
                file=sys.stderr,
                flush=True,
            )

    def update(self, step: int, record: dict[str, Any]) -> None:
        if record.get("val/reward/mean") is not None:
            self.val = record["val/reward/mean"]
        reward = _fmt(record.get("reward/mean"))
        if self.bar is not None:
            self.bar.update(self.task, completed=step, reward=reward, val=_fmt(self.val))
        elif self.enabled:
            done = step - self.first_step
            eta = (time.monotonic() - self.started) / done * (self.total - step) if done else 0.0
            print(
                f"step {step}/{self.total}  reward {reward}  val {_fmt(self.val)}  "
                f"{record.get('time/step_s', 0):.1f}s/step  ETA {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
