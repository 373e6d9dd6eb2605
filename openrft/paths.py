"""Where openrft keeps converted models and prepared data sets, and the names of files a
run directory shares with the job server.

`OPENRFT_CACHE` overrides the default `~/.cache/openrft`.
"""

from __future__ import annotations

import os
from pathlib import Path

# In a run directory while external agents may connect (env.agent = "external"): the agent
# proxy's URL, which the job server forwards /api/jobs/{id}/agent/v1/... to.
AGENT_FILE = "agent.json"


def cache_dir() -> Path:
    """The cache root; created on first use."""
    root = Path(os.environ.get("OPENRFT_CACHE") or Path.home() / ".cache" / "openrft")
    root.mkdir(parents=True, exist_ok=True)
    return root
