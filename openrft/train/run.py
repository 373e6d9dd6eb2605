"""The run scaffold shared by RL training (openrft.train.loop) and SFT (openrft.train.sft):
the run directory, resume, the logs, status, progress, stop requests, checkpoints (the last
ones and the best ones), early stopping, the final weights, summary.json and report.md.

    run = Run(config, run_dir, RL, resume, show_progress, stop)
    run.restore(policy, optimizer, scheduler, total_steps)
    if run.position.step == 0:
        run.log_start({...validation metrics...})
    for step in run.steps():
        ...                                   # the algorithm: one step
        run.end_step(step, record, prompts_seen, policy, optimizer, scheduler, rollouts)
    summary = run.finish(policy)

Every step seeds its RNGs from (seed, step) in the loop, and the data order is a pure
function of the seed and position, so a run resumed from a checkpoint logs the same steps
as one that was never interrupted; log lines after the checkpoint are dropped first.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from openrft.config import CheckpointConfig, JobConfig, config_to_dict, dump_config
from openrft.errors import CheckpointError, ConfigError
from openrft.metrics import names
from openrft.metrics.report import RL_PLOTS, SFT_PLOTS, Plot, write_report
from openrft.metrics.trackers import Trackers, check_backends, open_trackers
from openrft.metrics.usage import usage_totals
from openrft.metrics.writer import JsonlLog, read_jsonl
from openrft.train.checkpoint import (
    TrainPosition,
    best_checkpoints,
    checkpoint_problem,
    checkpoint_records,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from openrft.train.policy import Policy, set_threads
from openrft.train.progress import Progress
from openrft.train.status import write_status


@dataclass(frozen=True)
class RunKind:
    """What differs between an RL run and an SFT run in the scaffold."""

    name: str  # summary.json's "kind"
    metric: str  # the validation metric of val_before / val_after
    label: str  # that metric in words, for the report
    progress: tuple[tuple[str, str], ...]  # (label, metric) shown per step
    plots: tuple[Plot, ...]
    logs: tuple[str, ...]  # JSONL logs of the run directory besides metrics.jsonl


RL = RunKind(
    "rl",
    names.VAL_REWARD_MEAN,
    "validation reward",
    (("reward", names.REWARD_MEAN), ("val", names.VAL_REWARD_MEAN)),
    RL_PLOTS,
    ("rollouts",),
)
SFT = RunKind(
    "sft",
    names.VAL_LOSS,
    "validation loss",
    (("loss", names.LOSS), ("val loss", names.VAL_LOSS)),
    SFT_PLOTS,
    (),
)


@dataclass(frozen=True)
class RunSummary:
    val_before: float | None
    val_after: float | None
    steps: int
    wall_s: float
    run_dir: str
    report: str
    status: str = "completed"  # or "stopped": a stop request ended it after a checkpoint
    stop_reason: str = ""  # "early_stop": validations stopped improving (train.early_stop_patience)
    best_step: int | None = None  # the checkpoint with the best metric, when any was ranked
    best_value: float | None = None


class StopRequest(Protocol):
    def is_set(self) -> bool: ...


class Run:
    """One invocation of a run: opened, restored, stepped through, finished."""

    def __init__(
        self,
        config: JobConfig,
        run_dir: Path,
        kind: RunKind,
        resume: bool,
        show_progress: bool = True,
        stop: StopRequest | None = None,
    ):
        self.started = time.monotonic()
        self.config, self.run_dir, self.kind = config, run_dir, kind
        self.resume, self.show_progress, self.stop = resume, show_progress, stop
        checkpoint = config.checkpoint
        # The RL default metric means "the run's own": val/loss for SFT.
        default = CheckpointConfig.best_metric
        self.best_metric = (
            kind.metric if checkpoint.best_metric == default else (checkpoint.best_metric)
        )
        mode = checkpoint.best_mode
        self.maximize = mode == "max" or (mode == "auto" and "loss" not in self.best_metric)
        self.position = TrainPosition(step=0, prompts_seen=0, val_before=None, wall_s=0.0)
        self.notes: dict[str, Any] = {}  # extra facts for summary.json (the fast paths used)
        self.restored_from: Path | None = None  # the checkpoint a resumed run loaded
        self.stop_reason = ""
        self.total = 0  # steps of the whole run, known once restore() has the data
        check_backends(config.tracking.backends)  # a missing package fails before any work
        self.trackers = Trackers({})  # opened by restore(), once the resumed step is known
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(config, run_dir / "config.toml")
        set_threads(config.train.threads)
        torch.manual_seed(config.train.seed)

    def status(self, stage: str, message: str = "") -> None:
        write_status(self.run_dir, stage, self.position.step, getattr(self, "total", 0), message)

    def restore(
        self,
        policy: Policy,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        total_steps: int,
    ) -> None:
        """Load the latest checkpoint when resuming, and open the logs (dropping lines of
        steps after it: they belong to lost work)."""
        self.total = total_steps
        checkpoints = list_checkpoints(self.run_dir) if self.resume else []
        if checkpoints:
            self.restored_from = self._load_latest_sound(checkpoints, policy, optimizer, scheduler)
        finished = (self.run_dir / "final").exists()
        if self.resume and finished and (not checkpoints or self.position.step >= total_steps):
            raise CheckpointError(f"{self.run_dir} finished already; nothing to resume")
        self.prior_wall_s = self.position.wall_s
        keep_through = self.position.step if checkpoints else -1
        self.logs = {
            name: JsonlLog(self.run_dir / f"{name}.jsonl", keep_through_step=keep_through)
            for name in ("metrics", *self.kind.logs)
        }
        tracking = self.config.tracking
        self.trackers = open_trackers(
            tracking.backends,
            self.run_dir,
            self.config.name,
            tracking.project,
            config_to_dict(self.config),
            self.position.step,
        )

    def _load_latest_sound(
        self,
        checkpoints: list[Path],
        policy: Policy,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> Path:
        """Load the newest checkpoint that passes its checksums and loads; one that does not
        is skipped with a warning (an event on the job server) naming what is wrong."""
        skipped: list[str] = []
        for path in reversed(checkpoints):
            problem = checkpoint_problem(path)
            if problem is None:
                try:
                    self.position = load_checkpoint(path, policy, optimizer, scheduler)
                except CheckpointError as exc:
                    problem = str(exc)
            if problem is None:
                if skipped:
                    message = f"resuming from {path.name}: " + "; ".join(skipped)
                    print(f"openrft: warning: {message}", file=sys.stderr, flush=True)
                    self.notes["checkpoints_skipped"] = skipped
                    self.status("training", message)
                return path
            skipped.append(f"{path.name} is damaged ({problem})")
        raise CheckpointError(f"no usable checkpoint in {self.run_dir}: " + "; ".join(skipped))

    def log_start(self, record: dict[str, Any]) -> None:
        """Step 0: the starting model's validation."""
        self.logs["metrics"].write({names.STEP: 0, names.EPOCH: 0.0, **record})
        self.trackers.log_metrics(0, {names.EPOCH: 0.0, **record})
        self.position = replace(self.position, val_before=record.get(self.kind.metric))
        self._track_best(0, record)

    def steps(self) -> Iterator[int]:
        """The steps left to run; ends early after a stop request or early stopping."""
        self.progress = Progress(
            self.total,
            self.position.step,
            self.position.val_before,
            self.kind.progress,
            enabled=self.show_progress,
        )
        for step in range(self.position.step + 1, self.total + 1):
            self.status("training")
            yield step
            if self.stop_reason:
                return

    def validates(self, step: int) -> bool:
        interval = self.config.eval.interval
        return step == self.total or (interval > 0 and step % interval == 0)

    def end_step(
        self,
        step: int,
        record: dict[str, Any],
        prompts_seen: int,
        policy: Policy,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        rollouts: Iterable[dict[str, Any]] = (),
    ) -> None:
        """Log the step, track the best metric, checkpoint when due, show progress."""
        self.logs["metrics"].write(record)
        self.trackers.log_metrics(step, {k: v for k, v in record.items() if k != names.STEP})
        for line in rollouts:
            self.logs["rollouts"].write(line)
        if self.validates(step):
            self._track_best(step, record)
        self.position = replace(
            self.position,
            step=step,
            prompts_seen=prompts_seen,
            wall_s=self.prior_wall_s + time.monotonic() - self.started,
        )
        if self.stop is not None and self.stop.is_set() and step < self.total:
            self.stop_reason = "stopped"
        patience = self.config.train.early_stop_patience
        if patience and self.position.validations_since_best >= patience and step < self.total:
            self.stop_reason = "early_stop"
        checkpoint = self.config.checkpoint
        periodic = checkpoint.interval and step % checkpoint.interval == 0
        ranked = checkpoint.keep_best > 0 and self.validates(step)
        if step == self.total or periodic or self.stop_reason or ranked:
            metric = record.get(self.best_metric) if self.validates(step) else None
            save_checkpoint(
                self.run_dir, self.position, policy, optimizer, scheduler, self.config, metric
            )
            prune_checkpoints(
                self.run_dir, checkpoint.keep_last, checkpoint.keep_best, self.maximize
            )
        self.progress.update(step, record)

    def _track_best(self, step: int, record: dict[str, Any]) -> None:
        """Count a validation towards the best metric (a new best resets the patience)."""
        tracking = (
            self.config.checkpoint.keep_best
            or self.config.train.early_stop_patience
            or self.config.checkpoint.final == "best"
        )
        value = record.get(self.best_metric)
        if value is None:
            if tracking:
                logged = ", ".join(sorted(k for k in record if k.startswith("val/")))
                raise ConfigError(
                    "checkpoint.best_metric",
                    f"{self.best_metric!r} was not logged at validation step {step} "
                    f"(logged: {logged or 'no val/ metric'})",
                )
            return
        best = self.position.best_value
        better = best is None or (value > best if self.maximize else value < best)
        if better:
            self.position = replace(
                self.position, best_value=value, best_step=step, validations_since_best=0
            )
        else:
            since = self.position.validations_since_best + 1
            self.position = replace(self.position, validations_since_best=since)

    def finish(self, policy: Policy) -> RunSummary:
        """The final weights (the last, or the best checkpoint's), summary.json, report.md."""
        self.progress.close()
        for log in self.logs.values():
            log.close()
        status = "stopped" if self.stop_reason == "stopped" else "completed"
        records = checkpoint_records(self.run_dir)
        keep_best = max(self.config.checkpoint.keep_best, 1)
        best = best_checkpoints(records, keep_best, self.maximize)
        if status == "completed":
            if self.config.checkpoint.final == "best" and best:
                shutil.rmtree(self.run_dir / "final", ignore_errors=True)
                shutil.copytree(best[0].path / "model", self.run_dir / "final")
            else:
                policy.save(self.run_dir / "final")
        val_after = self._last_validation()
        summary = RunSummary(
            val_before=self.position.val_before,
            val_after=val_after,
            steps=self.position.step,
            wall_s=round(self.prior_wall_s + time.monotonic() - self.started, 1),
            run_dir=str(self.run_dir),
            report=str(self.run_dir / "report.md"),
            status=status,
            stop_reason="" if status == "stopped" else self.stop_reason,
            best_step=best[0].step if best else None,
            best_value=best[0].metric if best else None,
        )
        best_steps = {r.step for r in best[: self.config.checkpoint.keep_best]}
        listing = [
            {"step": r.step, "metric": r.metric, "best": r.step in best_steps} for r in records
        ]
        extra = {
            "kind": self.kind.name,
            "metric": self.kind.metric,
            "best_metric": self.best_metric,
        }
        write_report(
            self.run_dir, asdict(summary), self.kind.plots, self.kind.label, listing, self.notes
        )
        self._close_trackers()
        usage = usage_totals(read_jsonl(self.run_dir / "metrics.jsonl"))
        document = {
            **asdict(summary),
            **extra,
            "usage": usage,
            "checkpoints": listing,
            **self.notes,
        }
        (self.run_dir / "summary.json").write_text(json.dumps(document, indent=2))
        self.status(status)
        return summary

    def _close_trackers(self) -> None:
        """Send the report's plots and close the trackers; those a failure disabled are
        noted in summary.json."""
        pngs = [self.run_dir / plot[0] for plot in self.kind.plots]
        self.trackers.log_images([p for p in pngs if p.exists()])
        self.trackers.close()
        if self.trackers.disabled:
            self.notes["trackers_disabled"] = dict(self.trackers.disabled)

    def _last_validation(self) -> float | None:
        """The run's validation metric at its last validation (val_before if none since)."""
        for record in reversed(read_jsonl(self.run_dir / "metrics.jsonl")):
            if record.get(self.kind.metric) is not None:
                return record[self.kind.metric]
        return self.position.val_before
