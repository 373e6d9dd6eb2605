"""Append-only JSONL logs (metrics.jsonl, rollouts.jsonl), one record per line, flushed
as written. On resume, lines from steps after the checkpoint are dropped first, so a killed
run's partial step never appears twice."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


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
        self._file.write(json.dumps(clean(record), ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def truncate_after_step(path: Path, step: int) -> None:
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in kept if json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
