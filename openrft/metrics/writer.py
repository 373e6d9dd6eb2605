"""Append-only JSONL logs (metrics.jsonl, rollouts.jsonl), one record per line, flushed
as written. On resume, lines from steps after the checkpoint are dropped first, so a killed
run's partial step never appears twice, and so is a last line cut short by the kill. A write
that fails (a full disk) raises `RunFileError` naming the file and the space left."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from openrft.errors import RunFileError


def clean(value: Any) -> Any:
    """JSON-safe: NaN and inf become null (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


class JsonlLog:
    def __init__(self, path: Path, keep_through_step: int | None = None):
        self.path = path
        if keep_through_step is not None and path.exists():
            truncate_after_step(path, keep_through_step)
        self._file = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(clean(record), ensure_ascii=False) + "\n")
            self._file.flush()
        except OSError as exc:
            raise RunFileError(f"cannot write {self.path}: {exc} ({disk_free(self.path)})") from exc

    def close(self) -> None:
        self._file.close()


def truncate_after_step(path: Path, step: int) -> None:
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()  # cut short by a kill (or a full disk) while it was written
    kept = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise RunFileError(f"{path}:{number}: not a JSON line ({exc})") from exc
        if record.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def disk_free(path: Path) -> str:
    """The free space on the disk that holds `path`, for error messages."""
    try:
        free = shutil.disk_usage(path.parent if not path.is_dir() else path).free
    except OSError:
        return "free space unknown"
    return f"{free / 1024**2:.1f} MB free on its disk"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
