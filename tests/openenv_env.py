"""Where the tests find OpenEnv (openenv-core, which serves the environments the OpenEnv adapter
talks to): OPENRFT_OPENENV_PYTHON, else the .venv-openenv that `make openenv` builds. OpenEnv
tests are skipped when neither exists."""

from __future__ import annotations

from side_venvs import needs, side_python

OPENENV_PYTHON = side_python("OPENRFT_OPENENV_PYTHON", ".venv-openenv")
needs_openenv = needs(OPENENV_PYTHON, "OpenEnv", "openenv")
