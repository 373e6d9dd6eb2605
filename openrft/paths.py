"""Where openrft keeps converted models and prepared data sets.

`OPENRFT_CACHE` overrides the default `~/.cache/openrft`.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root; created on first use."""
    root = Path(os.environ.get("OPENRFT_CACHE") or Path.home() / ".cache" / "openrft")
    root.mkdir(parents=True, exist_ok=True)
    return root
