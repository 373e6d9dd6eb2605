"""`RUN_DIR/status.json`: what a run is doing now (stage, step), for the job server and
anyone watching a run directory. Written atomically, so a reader never sees half a file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from openrft.errors import RunFileError
from openrft.metrics.writer import disk_free

STAGES = ("loading", "data_processing", "validation", "training", "completed", "stopped", "failed")


def write_status(
    run_dir: Path, stage: str, step: int = 0, total: int = 0, message: str = ""
) -> None:
    record = {
        "stage": stage,
        "step": step,
        "total_steps": total,
        "message": message,
        "time": time.time(),
    }
    tmp = run_dir / ".status.json.tmp"
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, run_dir / "status.json")
    except OSError as exc:  # a full disk: say which file and how much room is left
        tmp.unlink(missing_ok=True)
        where = run_dir / "status.json"
        raise RunFileError(f"cannot write {where}: {exc} ({disk_free(tmp)})") from exc


def read_status(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None
