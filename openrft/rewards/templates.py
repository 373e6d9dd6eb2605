"""`openrft grader new KIND DIR`: a working grader to start from, with its own test."""

from __future__ import annotations

import shutil
from pathlib import Path

from openrft.errors import GraderError

TEMPLATES = Path(__file__).resolve().parent.parent / "grader_templates"
KINDS = ("math", "format", "generic", "judge", "lambda")


def write_template(kind: str, directory: str | Path) -> list[Path]:
    if kind not in KINDS:
        raise GraderError(f"unknown grader template {kind!r}; choose one of: {', '.join(KINDS)}")
    target = Path(directory)
    if target.exists() and any(target.iterdir()):
        raise GraderError(f"{target} is not empty; choose a new directory")
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted((TEMPLATES / kind).iterdir()):
        if source.is_file():
            shutil.copyfile(source, target / source.name)
            written.append(target / source.name)
    return written
