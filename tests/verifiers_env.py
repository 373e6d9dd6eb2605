"""Where the tests find verifiers: OPENRFT_VERIFIERS_PYTHON, else the .venv-verifiers that
`make verifiers` builds. verifiers tests are skipped when neither exists. The tasksets the
tests run live in tests/verifiers_tasksets (imported by the worker, never by pytest)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

LOCAL_VERIFIERS = Path(__file__).resolve().parents[1] / ".venv-verifiers" / "bin" / "python"
TASKSETS = Path(__file__).resolve().parent / "verifiers_tasksets"


def verifiers_python() -> str | None:
    if os.environ.get("OPENRFT_VERIFIERS_PYTHON"):
        return os.environ["OPENRFT_VERIFIERS_PYTHON"]
    return str(LOCAL_VERIFIERS) if LOCAL_VERIFIERS.exists() else None


VERIFIERS_PYTHON = verifiers_python()
needs_verifiers = pytest.mark.skipif(
    VERIFIERS_PYTHON is None, reason="no verifiers environment (make verifiers)"
)
