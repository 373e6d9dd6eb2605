"""Users' Python files imported by path: reward functions, tools files, environments.

One way for all of them: a unique module name per file (two files both called reward.py do
not collide), the module registered in `sys.modules` before it runs (dataclasses and
pickling inside it work), and the file's folder on `sys.path` while it loads (it can import
its neighbours). Callers turn a `UserFileError` into their own error, naming their field.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


class UserFileError(Exception):
    """A user's file that is missing, is not Python, or raised while it loaded."""

    def __init__(self, path: Path, problem: str, cause: BaseException | None = None):
        super().__init__(problem)
        self.path, self.problem, self.cause = path, problem, cause


def import_file(path: str | Path, prefix: str) -> ModuleType:
    """The module a Python file defines, executed once now; `prefix` names its kind in the
    module name (e.g. "_openrft_reward")."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise UserFileError(resolved, f"file not found: {resolved}")
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    stem = "".join(ch if ch.isalnum() else "_" for ch in resolved.stem)
    module_name = f"{prefix}_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise UserFileError(resolved, "not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(resolved.parent))
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[module_name]
        raise UserFileError(resolved, f"executing {resolved} failed", exc) from exc
    finally:
        with contextlib.suppress(ValueError):  # the file itself may have edited sys.path
            sys.path.remove(str(resolved.parent))
    return module
