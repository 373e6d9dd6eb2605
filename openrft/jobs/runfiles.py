"""Reading what a worker writes into its run directory, without importing the trainer (the
server never loads torch): metrics.jsonl (whole or incrementally), rollouts.jsonl by step,
checkpoints, status.json mapped onto Bedrock's statusDetails, the tail of worker.log, and
run-directory paths that cannot escape the directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from openrft.jobs.model import DETAIL_STAGES, JobError, JobNotFound

# Latest values kept on the job object (shown by `jobs list` and the dashboard).
LATEST_KEYS = (
    "reward/mean",
    "val/reward/mean",
    "loss/total",
    "policy/entropy",
    "completion/length_mean",
    "reward/error_rate",
)
STAGE_DETAIL = {  # status.json stage -> the statusDetails entry it is working on
    "loading": "dataProcessing",
    "data_processing": "dataProcessing",
    "validation": "validation",
    "training": "training",
}
ORDER = ("dataProcessing", "validation", "training")  # the order a run goes through them
STEP_PREFIX = re.compile(rb'^\{"step": (\d+)[,}]')


def read_metrics(run_dir: Path, after: int | None = None) -> list[dict[str, Any]]:
    """The lines of metrics.jsonl with step > after (all when after is None)."""
    lines = MetricsTail(run_dir / "metrics.jsonl").read_new()
    return [m for m in lines if after is None or m.get("step", 0) > after]


class MetricsTail:
    """Reads the lines appended to a JSONL file since the last call. A file that shrank (a
    resumed run drops the lines after its checkpoint) is read again from the start; callers
    skip steps they have seen."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def read_new(self) -> list[dict[str, Any]]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self.offset:
            self.offset = 0
        if size == self.offset:
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a half-written last line waits
        self.offset += len(complete)
        records = []
        for line in complete.splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
        return records


def update_latest(latest: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    merged = dict(latest)
    for record in records:
        merged.update({k: record[k] for k in LATEST_KEYS if k in record})
    return merged


def rollout_steps(run_dir: Path) -> list[int]:
    steps: set[int] = set()
    for line in _lines(run_dir / "rollouts.jsonl"):
        step = _line_step(line)
        if step is not None:
            steps.add(step)
    return sorted(steps)


def rollouts_for_step(run_dir: Path, step: int) -> list[dict[str, Any]]:
    lines = _lines(run_dir / "rollouts.jsonl")
    return [json.loads(line) for line in lines if _line_step(line) == step]


def _lines(path: Path) -> list[bytes]:
    try:
        return [line for line in path.read_bytes().splitlines() if line.strip()]
    except OSError:
        return []


def _line_step(line: bytes) -> int | None:
    match = STEP_PREFIX.match(line)  # the writer puts "step" first; parse only when it did not
    if match:
        return int(match.group(1))
    try:
        step = json.loads(line).get("step")
    except ValueError:
        return None
    return step if isinstance(step, int) else None


def list_checkpoints(run_dir: Path) -> list[dict[str, Any]]:
    """Complete checkpoints (checkpoints/step-N/state.json exists), oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.name.startswith("step-") and p.name[5:].isdigit() and (p / "state.json").exists()
    ]
    found.sort(key=lambda p: int(p.name[5:]))
    metrics = {m.get("step"): m for m in read_metrics(run_dir)} if found else {}
    return [
        {
            "step": int(p.name[5:]),
            "path": str(p),
            "created_at": (p / "state.json").stat().st_mtime,
            "metrics": metrics.get(int(p.name[5:]), {}),
        }
        for p in found
    ]


def safe_path(run_dir: Path, relative: str) -> Path:
    """A file inside the run directory; `..`, absolute paths and links out are refused."""
    parts = Path(relative).parts
    if not relative or Path(relative).is_absolute() or ".." in parts:
        raise JobError(f"bad path {relative!r}: must be relative, without '..'", "path")
    root = run_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise JobError(f"bad path {relative!r}: it leaves the run directory", "path")
    if not path.is_file():
        raise JobNotFound(f"no file {relative} in the run directory", "path")
    return path


def log_tail(path: Path, lines: int = 12, max_chars: int = 2000) -> str:
    """The last non-blank lines of a log; progress-bar redraws (\\r) count as lines."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64_000))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line.rstrip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    return "\n".join(kept[-lines:])[-max_chars:]


def status_details(stage: str | None, previous: dict[str, str], stopping: bool) -> dict[str, str]:
    """Bedrock's statusDetails from a status.json stage (a worker's view of its run)."""
    details = dict(previous)
    if stage in STAGE_DETAIL:
        current = STAGE_DETAIL[stage]
        index = ORDER.index(current)
        for name in ORDER[:index]:
            details[name] = "Completed"
        details[current] = "Stopping" if stopping else "InProgress"
        for name in ORDER[index + 1 :]:
            details[name] = "NotStarted"
    elif stage == "completed":
        details = {name: "Completed" for name in DETAIL_STAGES}
    return details


def ended_details(previous: dict[str, str], outcome: str) -> dict[str, str]:
    """The details once a run has ended: the stage it was in is `outcome` (Failed, Stopped);
    a run that never reported a stage failed in dataProcessing."""
    details = dict(previous)
    active = [n for n in ORDER if details.get(n) in ("InProgress", "Stopping")]
    if active:
        details[active[-1]] = outcome
    elif outcome == "Failed" and all(details.get(n) != "Failed" for n in ORDER):
        started = [n for n in ORDER if details.get(n) != "NotStarted"]
        target = next((n for n in ORDER if details.get(n) == "NotStarted"), None)
        details[target or (started[-1] if started else "dataProcessing")] = outcome
    return details
