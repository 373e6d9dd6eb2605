"""Where the tests find verifiers: OPENRFT_VERIFIERS_PYTHON, else the .venv-verifiers that
`make verifiers` builds. verifiers tests are skipped when neither exists. The tasksets the
tests run live in tests/verifiers_tasksets (imported by the worker, never by pytest)."""

from __future__ import annotations

from pathlib import Path

from side_venvs import needs, side_python

TASKSETS = Path(__file__).resolve().parent / "verifiers_tasksets"
VERIFIERS_PYTHON = side_python("OPENRFT_VERIFIERS_PYTHON", ".venv-verifiers")
needs_verifiers = needs(VERIFIERS_PYTHON, "verifiers", "verifiers")
