"""Runs verifiers (0.4) episodes for openrft, in verifiers' own virtual environment.

Started by openrft.rollout.verifiers_env as `<verifiers venv>/bin/python verifiers_worker.py`;
it imports only verifiers and the standard library (verifiers pins openai<3, openrft does
not, so they cannot share a venv). It talks JSON lines on stdin/stdout (its logs and the
library's go to stderr):

    in:  {"taskset": id, "args": {...}, "harness": "null", "max_turns": K, "path": [dirs]}
    out: {"tasks": [{"idx", "id", "name", "prompt", "system_prompt", "answer", "data"}]}
    in:  {"run": [idx, ...], "samples": G, "max_concurrent": C, "base_url", "api_key",
          "model", "renderer_model", "tool_parser", "sampling": {...}}
    out: one {"episode": {...}} per finished episode, in any order, then {"done": n}

Episodes run with the subprocess runtime (verifiers' default is a hosted sandbox), and the
harness's program runs on this interpreter instead of a `uv`-built environment (no
download; the venv holds what the program needs). That is the one touch of verifiers'
internals, checked against verifiers==0.4.0 in tests/rollout/test_verifiers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

KEY_VARIABLE = "OPENRFT_POLICY_TOKEN"  # the proxy key; "API_KEY" names are kept from tools


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def run_scripts_here() -> None:
    """verifiers runs a harness's PEP 723 program through `uv sync --script`, which fetches
    its dependencies (openai, mcp, httpx...) from PyPI on first use. They are in this venv:
    write the script where verifiers would (content-addressed, atomically) and run it on
    this interpreter."""
    from verifiers.v1.runtimes.base import Runtime

    async def prepare_uv_script(self, script, env=None, *, activate=True):
        data = script.encode() if isinstance(script, str) else script
        directory = Path(os.environ.get("OPENRFT_VF_SCRIPTS", Path.home() / ".cache" / "openrft"))
        path = directory / "verifiers-scripts" / f"{hashlib.sha256(data).hexdigest()}.py"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_bytes(data)
            partial.replace(path)
        return [sys.executable, str(path)]

    if not hasattr(Runtime, "prepare_uv_script"):
        raise RuntimeError("verifiers' Runtime.prepare_uv_script is gone: a new verifiers?")
    Runtime.prepare_uv_script = prepare_uv_script


def register_hermes_parser() -> None:
    """renderers' tool parser "hermes": its "qwen3" parser (calls in <tool_call> tags), and
    openrft's rule for a reply that is nothing but calls' JSON, one per line, without the
    tags (openrft.rollout.tool_calls._bare_calls: small models such as Qwen2.5-Coder-0.5B
    drop the tags more often than not). With it a model's calls read the same under
    verifiers as in openrft's own episodes."""
    from renderers.base import ParsedToolCall, ToolCallParseStatus
    from renderers.parsers import TOOL_PARSERS, Qwen3ToolParser

    class HermesToolParser(Qwen3ToolParser):
        def extract(self, ids):
            content, calls = super().extract(ids)
            if calls:
                return content, calls
            text = self._tokenizer.decode(ids, skip_special_tokens=True).strip()
            fenced = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, re.DOTALL)
            lines = [line.strip() for line in (fenced.group(1) if fenced else text).splitlines()]
            bare = []
            for line in filter(None, lines):
                try:
                    value = json.loads(line) if line.startswith("{") else None
                except ValueError:
                    value = None
                if not (isinstance(value, dict) and set(value) == {"name", "arguments"}):
                    return ids, []
                if not (isinstance(value["name"], str) and isinstance(value["arguments"], dict)):
                    return ids, []
                bare.append(
                    ParsedToolCall(
                        raw=line,
                        name=value["name"],
                        arguments=value["arguments"],
                        token_span=(0, len(ids)),
                        status=ToolCallParseStatus.OK,
                    )
                )
            return ([], bare) if bare else (ids, [])

    TOOL_PARSERS["hermes"] = HermesToolParser


def describe(task: Any) -> dict[str, Any]:
    data = task.data
    dumped = data.model_dump(mode="json", exclude_none=True)
    return {
        "idx": data.idx,
        "id": data.id,
        "name": data.name,
        "prompt": dumped.get("prompt"),
        "system_prompt": data.system_prompt,
        "answer": dumped.get("answer"),
        "data": {k: v for k, v in dumped.items() if k not in ("prompt", "system_prompt")},
    }


def episode_record(idx: int, episode: Any) -> dict[str, Any]:
    traces = []
    for trace in episode.traces:
        rewards = {
            name: None if r is None else {"score": r.score, "weight": r.weight, "value": r.value}
            for name, r in trace.rewards.items()
        }
        branches = [
            {
                "token_ids": list(branch.token_ids),
                "sampled_mask": [bool(m) for m in branch.sampled_mask],
                "trainable": bool(branch.trainable),
            }
            for branch in trace.branches
        ]
        traces.append(
            {
                "id": str(trace.id),
                "ok": bool(trace.ok),
                "trainable": bool(trace.agent.trainable),
                "reward": trace.reward,
                "rewards": rewards,
                "metrics": dict(trace.metrics),
                "stop_condition": trace.stop_condition,
                "is_truncated": bool(trace.is_truncated),
                "is_timeout": bool(trace.is_timeout),
                "num_turns": trace.num_turns,
                "errors": [str(e) for e in trace.errors],
                "branches": branches,
            }
        )
    return {
        "idx": idx,
        "ok": bool(episode.ok),
        "is_timeout": bool(getattr(episode, "is_timeout", False)),
        "errors": [str(e) for e in episode.errors],
        "traces": traces,
    }


async def serve(setup: dict[str, Any]) -> None:
    import verifiers.v1 as vf

    agent: dict[str, Any] = {"runtime": {"type": "subprocess"}, "max_turns": setup["max_turns"]}
    if setup.get("harness"):
        agent["harness"] = {"id": setup["harness"]}
    config = vf.resolve_env_config(
        {
            "taskset": {"id": setup["taskset"], **setup.get("args", {})},
            "agent": agent,
            "timeout": {"episode": setup["timeout_s"]},
        }
    )
    env = vf.load_environment(config)
    if not env.taskset.bounded:
        raise ValueError(f"taskset {setup['taskset']!r} is infinite: bound it (num_tasks)")
    tasks = {task.data.idx: task for task in env.taskset}
    emit({"tasks": [describe(task) for task in tasks.values()]})
    async with env.serving():
        while line := await asyncio.to_thread(sys.stdin.readline):
            await run(vf, env, tasks, json.loads(line))


async def run(vf: Any, env: Any, tasks: dict[int, Any], request: dict[str, Any]) -> None:
    import renderers

    os.environ[KEY_VARIABLE] = request["api_key"]
    renderer = renderers.DefaultRendererConfig(tool_parser=request.get("tool_parser"))
    context = vf.ModelContext(
        model=request["model"],
        sampling=vf.SamplingConfig(**request["sampling"]),
        client=vf.TrainClientConfig(
            base_url=request["base_url"],
            api_key_var=KEY_VARIABLE,
            renderer_model_name=request["renderer_model"],
            renderer=renderer,
        ),
    )
    limit = asyncio.Semaphore(request["max_concurrent"])

    async def one(idx: int) -> None:
        try:
            slot = env.slots(tasks[idx], 1)[0]
            emit({"episode": episode_record(idx, await env.run_slot(slot, context, limit))})
        except Exception as error:  # an episode verifiers could not even start
            emit({"episode": {"idx": idx, "ok": False, "errors": [repr(error)], "traces": []}})

    runs = [idx for idx in request["run"] for _ in range(request["samples"])]
    await asyncio.gather(*(one(idx) for idx in runs))
    emit({"done": len(runs)})


async def guarded(setup: dict[str, Any]) -> None:
    """serve(), cancelled on SIGTERM or when openrft (the parent) is gone, so verifiers'
    own clean-up stops the harness programs and tool servers it started (each in a session
    of its own: they would outlive a plain kill of this process)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        loop.call_soon_threadsafe(task.cancel)

    threading.Thread(target=watch, daemon=True).start()
    try:
        await serve(setup)
    except asyncio.CancelledError:
        print("verifiers worker: stopping (asked to, or openrft is gone)", file=sys.stderr)
        # A cancelled stdin read holds a thread that asyncio.run would wait for.
        deadline = threading.Timer(20.0, os._exit, args=(0,))
        deadline.daemon = True
        deadline.start()


def main() -> None:
    setup = json.loads(sys.stdin.readline())
    setup["path"] = [os.path.abspath(directory) for directory in setup.get("path", [])]
    for directory in reversed(setup["path"]):
        sys.path.insert(0, directory)
    # Toolsets start as `python -m <module>`: their modules must import in the children too.
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([*setup["path"], *inherited])
    try:
        run_scripts_here()
        register_hermes_parser()
        asyncio.run(guarded(setup))
    except Exception as error:
        traceback.print_exc()
        emit({"error": f"{type(error).__name__}: {error}"})
        sys.exit(1)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
