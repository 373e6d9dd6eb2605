"""Live progress for a run: a rich progress bar (step, the run's metrics, its latest
validation, ETA) on a terminal, and one plain line per step otherwise (job logs, CI)."""

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

STEP_SECONDS = "time/step_s"


class Progress:
    """`fields`: (label, metric) pairs shown per step; the last is the validation metric,
    which keeps its latest value between validations."""

    def __init__(
        self,
        total: int,
        done: int,
        val_before: float | None,
        fields: tuple[tuple[str, str], ...],
        enabled: bool = True,
    ):
        self.total, self.first_step, self.enabled = total, done, enabled
        self.fields = fields
        self.val = val_before
        self.started = time.monotonic()
        self.bar = None
        console = Console(stderr=True)
        if enabled and console.is_terminal:
            text = "  ".join(
                f"{label} {{task.fields[f{i}]}}" for i, (label, _) in enumerate(fields)
            )
            self.bar = RichProgress(
                TextColumn("[bold]step"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn(text),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
            )
            self.task = self.bar.add_task("run", total=total, completed=done, **self._cells({}))
            self.bar.start()
        elif enabled:
            label = fields[-1][0]
            print(
                f"openrft: starting at step {done}/{total}, {label} {_fmt(val_before)}",
                file=sys.stderr,
                flush=True,
            )

    def _cells(self, record: dict[str, Any]) -> dict[str, str]:
        values = [record.get(key) for _, key in self.fields[:-1]] + [self.val]
        return {f"f{i}": _fmt(value) for i, value in enumerate(values)}

    def update(self, step: int, record: dict[str, Any]) -> None:
        if record.get(self.fields[-1][1]) is not None:
            self.val = record[self.fields[-1][1]]
        if self.bar is not None:
            self.bar.update(self.task, completed=step, **self._cells(record))
        elif self.enabled:
            done = step - self.first_step
            eta = (time.monotonic() - self.started) / done * (self.total - step) if done else 0.0
            cells = self._cells(record)
            shown = "  ".join(
                f"{label} {cells[f'f{i}']}" for i, (label, _) in enumerate(self.fields)
            )
            print(
                f"step {step}/{self.total}  {shown}  "
                f"{record.get(STEP_SECONDS, 0):.1f}s/step  ETA {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
