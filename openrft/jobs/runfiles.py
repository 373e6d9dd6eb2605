"""Reading what a worker writes into its run directory, without importing the trainer (the
server never loads torch): metrics.jsonl (whole or incrementally), rollouts.jsonl by step,
checkpoints, status.json mapped onto Bedrock's statusDetails, the tail of worker.log, and
run-directory paths that cannot escape the directory.

The server answers many readers of the same files (dashboards polling, metrics streams), so
metrics.jsonl and rollouts.jsonl are read through process-wide caches (`JsonlCache`): each
call reads only the lines appended since the last one, parses metrics once, and keeps the byte
ranges of each step's rollouts, so a request costs what is new, not the whole file.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from openrft.jobs.model import DETAIL_STAGES, JobError, JobNotFound
from openrft.metrics.usage import RunningUsage

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
    """The lines of metrics.jsonl with step > after (all when after is None). The records are
    shared with other callers (cached): read them, do not change them."""
    return _cached(run_dir / "metrics.jsonl", MetricsCache).after(after)


def read_usage(run_dir: Path) -> dict[str, int]:
    """The run's usage totals so far (openrft.metrics.usage), kept as metrics.jsonl grows:
    a request does not sum the whole file again."""
    return _cached(run_dir / "metrics.jsonl", MetricsCache).usage_totals()


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
    return _cached(run_dir / "rollouts.jsonl", RolloutsCache).steps()


def rollouts_for_step(run_dir: Path, step: int) -> list[dict[str, Any]]:
    return _cached(run_dir / "rollouts.jsonl", RolloutsCache).records(step)


class JsonlCache:
    """A JSONL file read incrementally under a lock: `_refresh` hands each complete line
    appended since the last call to `_add` with its byte offset. A file replaced (a resumed
    run truncates with os.replace), shrunk or rewritten in place is read again from the start;
    a half-written last line waits for its newline."""

    CHECK = 64  # bytes before the offset compared on each refresh: a rewrite shows there

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.identity: tuple[int, int] | None = None
        self._reset()

    def _reset(self) -> None:
        self.offset, self.check = 0, b""  # the bytes read so far; the last CHECK of them

    def _add(self, line: bytes, offset: int) -> None:
        raise NotImplementedError

    def _refresh(self, f: BinaryIO | None) -> None:
        """Catch up with the open file `f` (None: there is no file); hold self.lock."""
        if f is None:
            self.identity = None
            self._reset()
            return
        stat = os.fstat(f.fileno())
        identity = (stat.st_dev, stat.st_ino)
        if identity != self.identity or stat.st_size < self.offset:
            self.identity = identity
            self._reset()
        elif self.check:
            f.seek(self.offset - len(self.check))
            if f.read(len(self.check)) != self.check:
                self._reset()
        if stat.st_size == self.offset:
            return
        f.seek(self.offset)
        chunk = f.read(stat.st_size - self.offset)
        complete = chunk[: chunk.rfind(b"\n") + 1]
        position = self.offset
        for line in complete.split(b"\n")[:-1]:
            if line.strip():
                self._add(line, position)
            position += len(line) + 1
        self.offset += len(complete)
        if complete:
            self.check = (self.check + complete)[-self.CHECK :]

    def _open(self) -> BinaryIO | None:
        try:
            return self.path.open("rb")
        except OSError:
            return None

    @contextlib.contextmanager
    def _caught_up(self) -> Iterator[None]:
        """Hold the lock, with everything appended since the last call read in."""
        opened = self._open()
        with self.lock:
            try:
                self._refresh(opened)
            finally:
                if opened is not None:
                    opened.close()
            yield


class MetricsCache(JsonlCache):
    """metrics.jsonl parsed once; `after(step)` finds its place by bisection while the steps
    rise (they do unless a line is out of order, then it filters); the usage totals are kept
    up to date line by line."""

    def _reset(self) -> None:
        super()._reset()
        self.records: list[dict[str, Any]] = []
        self.steps: list[int | float] = []
        self.ordered = True
        self.usage = RunningUsage()

    def _add(self, line: bytes, offset: int) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            return
        if not isinstance(record, dict):
            return
        step = record.get("step", 0)
        if not isinstance(step, int | float) or (self.steps and step < self.steps[-1]):
            self.ordered = False
        self.records.append(record)
        self.steps.append(step if isinstance(step, int | float) else 0)
        self.usage.add(record)

    def usage_totals(self) -> dict[str, int]:
        with self._caught_up():
            return dict(self.usage.totals)

    def after(self, after: int | None) -> list[dict[str, Any]]:
        with self._caught_up():
            if after is None:
                return list(self.records)
            if self.ordered:
                return self.records[bisect.bisect_right(self.steps, after) :]
            return [m for m in self.records if m.get("step", 0) > after]


class RolloutsCache(JsonlCache):
    """rollouts.jsonl indexed by step: the byte ranges of each step's lines, read (and parsed)
    only when that step is asked for."""

    def _reset(self) -> None:
        super()._reset()
        self.ranges: dict[int, list[tuple[int, int]]] = {}

    def _add(self, line: bytes, offset: int) -> None:
        step = _line_step(line)
        if step is not None:
            self.ranges.setdefault(step, []).append((offset, len(line)))

    def steps(self) -> list[int]:
        with self._caught_up():
            return sorted(self.ranges)

    def records(self, step: int) -> list[dict[str, Any]]:
        opened = self._open()
        if opened is None:
            with self.lock:
                self._refresh(None)
            return []
        with opened, self.lock:
            self._refresh(opened)  # the ranges below are of this very file
            lines = []
            for offset, length in self.ranges.get(step, []):
                opened.seek(offset)
                lines.append(opened.read(length))
        return [json.loads(line) for line in lines]


_CACHES: OrderedDict[tuple[Path, type], JsonlCache] = OrderedDict()
_CACHES_LOCK = threading.Lock()
C = TypeVar("C", bound=JsonlCache)
MAX_CACHED = 32  # files kept (least recently used dropped): the jobs being watched


def _cached(path: Path, kind: type[C]) -> C:
    key = (path, kind)
    with _CACHES_LOCK:
        cache = _CACHES.get(key)
        if cache is None:
            cache = _CACHES[key] = kind(path)
            while len(_CACHES) > MAX_CACHED:
                _CACHES.popitem(last=False)
        else:
            _CACHES.move_to_end(key)
    assert isinstance(cache, kind)
    return cache


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
