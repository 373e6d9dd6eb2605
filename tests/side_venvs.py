"""The side environments the tests use (vLLM, OpenEnv, verifiers: each pins what openrft's
own venv cannot hold, so `make vllm` / `make openenv` / `make verifiers` build them): where
each one's python is (an environment variable, else the repository's venv), and a skip
marker for tests that need it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def side_python(variable: str, venv: str) -> str | None:
    """$variable, else ROOT/venv/bin/python when it exists, else None."""
    if os.environ.get(variable):
        return os.environ[variable]
    local = ROOT / venv / "bin" / "python"
    return str(local) if local.exists() else None


def needs(python: str | None, what: str, target: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(python is None, reason=f"no {what} environment (make {target})")
