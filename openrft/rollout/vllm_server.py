"""Starting and stopping a vLLM server for rollouts (openrft.rollout.vllm_engine talks to it).

vLLM runs in its own process, usually from its own virtual environment: its torch, CUDA and
transformers pins then never meet ours (the dependency clash TRL and verl users fight). The
server is the stock OpenAI-compatible `vllm serve`; openrft only adds the flags that weight
sync needs: runtime LoRA loading, or the dev-mode RPC that reloads full weights from disk.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from openrft.errors import RolloutError
from openrft.net import listen_socket

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's --max-lora-rank accepts


@dataclass
class VLLMServer:
    """A vLLM server: its base URL, and the process when openrft started it."""

    url: str  # http://host:port, without /v1
    process: subprocess.Popen | None = None  # None for a server someone else runs
    log_path: Path | None = None  # the started server's stdout and stderr

    def close(self) -> None:
        """Stop a server openrft started (the whole process group: vLLM forks workers)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def serve_arguments(
    model_dir: Path,
    port: int,
    *,
    served_name: str,
    lora_rank: int | None,
    dtype: str,
    gpu_memory_utilization: float,
    max_model_len: int,
    seed: int,
    extra_args: tuple[str, ...] = (),
) -> list[str]:
    """The flags openrft passes to the vLLM server command."""
    args = [
        "--model", str(model_dir),
        "--served-model-name", served_name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--dtype", dtype,
        "--seed", str(seed),
        "--gpu-memory-utilization", str(gpu_memory_utilization),
        "--enable-prefix-caching",  # the G samples of a prompt share its KV blocks
    ]  # fmt: skip
    if max_model_len > 0:
        args += ["--max-model-len", str(max_model_len)]
    if lora_rank is not None:
        supported = next((r for r in LORA_RANKS if r >= lora_rank), None)
        if supported is None:
            raise RolloutError(f"vLLM serves LoRA ranks up to {LORA_RANKS[-1]}, not {lora_rank}")
        # Two slots: the next adapter loads while the previous one may still serve a request.
        args += ["--enable-lora", "--max-lora-rank", str(supported), "--max-loras", "2"]
    return args + list(extra_args)


def start_server(
    command: str, arguments: list[str], log_path: Path, timeout_s: float
) -> VLLMServer:
    """Run `command arguments` in a new process group and wait until /health answers."""
    port = arguments[arguments.index("--port") + 1]
    env = os.environ | {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",  # /v1/load_lora_adapter
        "VLLM_SERVER_DEV_MODE": "1",  # /collective_rpc, for full-weight reloads
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        try:
            process = subprocess.Popen(
                [*shlex.split(command), *arguments],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            message = f"could not start vLLM with vllm.command = {command!r}: {exc}"
            raise RolloutError(message) from exc
    server = VLLMServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RolloutError(
                f"the vLLM server exited with code {process.returncode} while starting; "
                f"its log ({log_path}) ends:\n{log_tail(log_path)}"
            )
        if is_healthy(server.url):
            return server
        time.sleep(1.0)
    server.close()
    raise RolloutError(
        f"the vLLM server did not answer {server.url}/health within {timeout_s:.0f} s "
        f"(vllm.start_timeout_s); its log ({log_path}) ends:\n{log_tail(log_path)}"
    )


def is_healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5.0).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    sock = listen_socket("127.0.0.1", 0)
    try:
        return sock.getsockname()[1]
    finally:
        sock.close()


EXCEPTION_LINE = re.compile(r"(?:^|\] )([\w.]*(?:Error|Exception): .*)$")
# Failures of a vLLM version whose log line alone does not say what to do about them.
KNOWN_FAILURES = {
    "CPU Generator does not use offset": (
        "vLLM's CPU build (0.32) crashes on a seeded request whose prompt is prefilled in "
        "several chunks. Let one scheduler step hold a whole rollout step's prompt tokens "
        "(prompts x samples x prompt length): vllm.extra_args = "
        '["--max-num-batched-tokens", "16384"] (its CPU default is 2048).'
    ),
}


def log_tail(path: Path, lines: int = 25) -> str:
    """The end of a vLLM log, after the root cause when it lies further up (an engine
    failure ends with pages of follow-on tracebacks) and what to do about a known one."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = "\n".join(text.splitlines()[-lines:])
    # An exception line, bare or after vLLM's "(Process pid=N) ERROR date [file:line] " prefix.
    causes = [
        match.group(1)
        for line in text.splitlines()
        if (match := EXCEPTION_LINE.search(line)) and "EngineDeadError" not in line
    ]
    if causes and causes[0] not in tail:
        tail = f"{tail}\nthe first exception further up the log:\n{causes[0]}"
    hints = [hint for marker, hint in KNOWN_FAILURES.items() if marker in text]
    return "\n".join([tail, *hints])
