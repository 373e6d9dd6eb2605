"""Helpers shared by the data tests: write real JSONL files into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

USER = {"role": "user", "content": "Is this good?"}
SYSTEM = {"role": "system", "content": "Answer briefly."}


def row(**fields: Any) -> str:
    """A valid row as one JSON line, with `fields` added or replaced."""
    return json.dumps({"messages": [SYSTEM, USER], "reference_answer": "yes", **fields})


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
