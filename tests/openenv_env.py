"""Where the tests find OpenEnv (openenv-core, which serves the environments the OpenEnv adapter
talks to): OPENRFT_OPENENV_PYTHON, else the .venv-openenv that `make openenv` builds. OpenEnv
tests are skipped when neither exists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

LOCAL_OPENENV = Path(__file__).resolve().parents[1] / ".venv-openenv" / "bin" / "python"


def openenv_python() -> str | None:
    if os.environ.get("OPENRFT_OPENENV_PYTHON"):
        return os.environ["OPENRFT_OPENENV_PYTHON"]
    return str(LOCAL_OPENENV) if LOCAL_OPENENV.exists() else None


OPENENV_PYTHON = openenv_python()
needs_openenv = pytest.mark.skipif(
    OPENENV_PYTHON is None, reason="no OpenEnv environment (make openenv)"
)
