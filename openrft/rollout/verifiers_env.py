"""verifiers tasksets as openrft environments (`env.verifiers = "my_taskset"`).

verifiers (0.4: `Taskset`, `Task`, `Toolset`, `Harness`) runs in its own virtual environment
(`make verifiers`: its openai<3 pin clashes with openrft's), in one long-lived worker
process (openrft/rollout/verifiers_worker.py) that loads the taskset once, lists its tasks
(the job's rows) and runs G episodes per task on request. Its training client renders the
prompts and calls the agent proxy's token endpoint (`POST /inference/v1/generate`, as it
would a vLLM server), so every token it is given was sampled by the policy being trained.

Each episode comes back as verifiers' own account of it: the trace's reward and reward
components, metrics, stop condition, and its branches (the training samples: token ids and
which were sampled). A branch becomes a training row only when each of its sampled spans is
a completion the proxy served for that very prefix (openrft.rollout.agents.calls_of_branch):
the tokens, log-probs and finish reasons trained on are the engine's, never re-rendered. An
episode that verifiers marks failed, whose branches do not match, or that outlives the
deadline fails (counted), never the step; a worker that dies is started again next step.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openrft.errors import ConfigError, RolloutError
from openrft.rollout.agent_proxy import AgentCall, AgentProxy, new_key
from openrft.rollout.agents import calls_of_branch, episode_from_rows
from openrft.rollout.episodes import Episode
from openrft.types import Completion, Example, FinishReason

WORKER = Path(__file__).with_name("verifiers_worker.py")
TASK_KEY = "verifiers_idx"  # where a row's metadata keeps its task's index in the taskset
MAKE_HINT = "run `make verifiers` (it installs verifiers==0.4.0 into .venv-verifiers)"


@dataclass(frozen=True)
class VerifiersSettings:
    taskset: str  # env.verifiers: a taskset id or module, as vf.load_environment resolves it
    args: dict[str, Any] = field(default_factory=dict)  # env.verifiers_args
    python: str = ".venv-verifiers/bin/python"  # env.verifiers_python
    harness: str = "null"  # env.verifiers_harness ("" = the taskset's own, else bash)
    max_turns: int = 8  # model calls per episode
    timeout_s: float = 600.0  # per episode
    path: tuple[str, ...] = ()  # directories the taskset's modules import from
    renderer_model: str = ""  # the model directory verifiers loads its tokenizer from
    tool_parser: str | None = None  # its renderer's tool parser (None: tool-less tasksets)
    start_timeout_s: float = 300.0  # loading verifiers and the taskset


class VerifiersWorker:
    """The worker process: its tasks, and episodes on request."""

    def __init__(self, settings: VerifiersSettings):
        self.settings = settings
        self.process: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        # verifiers keeps its clients (and their API keys) for the process's life: one key
        # serves every batch of this worker.
        self.key = new_key()
        self.tasks: list[dict[str, Any]] = self._start()

    def _start(self) -> list[dict[str, Any]]:
        python = Path(self.settings.python).expanduser()
        if not python.exists():
            raise ConfigError("env.verifiers_python", f"{python} does not exist: {MAKE_HINT}")
        self.process = subprocess.Popen(
            [str(python), str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # its log (and verifiers') goes where openrft's goes
            text=True,
            bufsize=1,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, args=(self.process, self.lines), daemon=True).start()
        setup = {
            "taskset": self.settings.taskset,
            "args": self.settings.args,
            "harness": self.settings.harness,
            "max_turns": self.settings.max_turns,
            "timeout_s": self.settings.timeout_s,
            "path": list(self.settings.path),
        }
        self._send(setup)
        first = self._next(time.monotonic() + self.settings.start_timeout_s)
        if first is None or "tasks" not in first:
            self.close()
            why = (first or {}).get("error", "it exited or said nothing (its log is above)")
            raise RolloutError(f"verifiers taskset {self.settings.taskset!r}: {why}")
        return first["tasks"]

    @staticmethod
    def _read(process: subprocess.Popen[str], lines: queue.Queue) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                lines.put(json.loads(line))
            except ValueError:  # something printed to stdout that is not ours: pass it on
                print(line, end="", file=sys.stderr)
        lines.put(None)

    def _send(self, message: dict[str, Any]) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def _next(self, deadline: float) -> dict[str, Any] | None:
        """The worker's next message, or None when it died or the deadline passed."""
        try:
            return self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None

    def run(
        self,
        proxy: AgentProxy,
        examples: Sequence[Example],
        n: int,
        max_concurrent: int,
    ) -> list[list[Completion]]:
        """n episodes per example (a row made from one of this worker's tasks)."""
        if self.process is None or self.process.poll() is not None:
            self.tasks = self._start()  # the last one died: a fresh one
        total = len(examples) * n
        live = min(total, max_concurrent)
        key = proxy.open(agents=live, key=self.key)
        params = proxy.params
        started = time.monotonic()
        waves = -(-total // max_concurrent)
        deadline = started + waves * self.settings.timeout_s + 60.0
        records: dict[int, list[dict[str, Any]]] = {}
        received, failure = 0, ""
        cut: FinishReason = "error"  # how episodes the worker never reported end
        try:
            self._send(
                {
                    "run": [example.metadata[TASK_KEY] for example in examples],
                    "samples": n,
                    "max_concurrent": max_concurrent,
                    "base_url": proxy.url.rstrip("/"),
                    "api_key": key,
                    "model": proxy.model_id,
                    "renderer_model": self.settings.renderer_model,
                    "tool_parser": self.settings.tool_parser,
                    "sampling": {
                        "temperature": params.temperature,
                        "top_p": params.top_p,
                        "max_tokens": params.max_new_tokens,
                    },
                }
            )
            while received < total:
                message = self._next(deadline)
                if message is None:
                    if self.process is not None and self.process.poll() is None:
                        cut = "timeout"
                        waited = deadline - started
                        failure = f"the episodes outlived their deadline ({waited:.0f} s)"
                    else:
                        failure = "the verifiers worker exited (its log is above)"
                    break
                if "episode" in message:
                    record = message["episode"]
                    records.setdefault(record["idx"], []).append(record)
                    received += 1
                    if received > total - live:  # no episode left to start in its place
                        proxy.finished(key)
                elif "error" in message:
                    failure = f"the verifiers worker failed: {message['error']}"
        except OSError as error:  # its stdin closed: it died
            failure = f"the verifiers worker is gone: {error!r}"
        finally:
            calls = proxy.close(key)
        if failure:
            self.close()  # started again on the next run
        by_session: dict[str, list[AgentCall]] = {}
        for call in calls.calls:
            by_session.setdefault(call.session, []).append(call)
        groups = []
        for example in examples:
            mine = records.get(example.metadata[TASK_KEY], [])
            group = [mine.pop(0) if mine else None for _ in range(n)]
            groups.append(
                [
                    episode_of(record, by_session, calls.session_limits, failure, cut)
                    for record in group
                ]
            )
        return [[episode.completion() for episode in group] for group in groups]

    def close(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()  # an idle worker ends here
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.terminate()  # a busy one cancels its episodes; verifiers stops their tools
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def episode_of(
    record: dict[str, Any] | None,
    by_session: dict[str, list[AgentCall]],
    session_limits: dict[str, FinishReason],
    failure: str,
    cut: FinishReason = "error",
) -> Episode:
    """One verifiers episode as openrft's: its first trainable trace's branches as rows (the
    first the episode, the others its branches) and its reward components as the outcome."""
    if record is None:
        return Episode((), (), cut, failure)  # `cut`: how the run lost it (error, timeout)
    trace = next((t for t in record["traces"] if t["trainable"]), None)
    if not record["ok"] or trace is None:
        errors = [*record["errors"], *(e for t in record["traces"] for e in t["errors"])]
        finish: FinishReason = "timeout" if record.get("is_timeout") else "error"
        why = "; ".join(errors) or "verifiers marked the episode failed (no error given)"
        if trace is None and record["ok"]:
            why = "the episode has no trainable trace"
        return Episode((), (), finish, f"verifiers: {why}")
    calls = by_session.get(trace["id"], [])
    try:
        rows = [
            calls_of_branch(calls, branch["token_ids"], branch["sampled_mask"])
            for branch in trace["branches"]
            if branch["trainable"]
        ]
    except ValueError as mismatch:
        return Episode((), (), "error", f"verifiers: a branch of trace {trace['id']}: {mismatch}")
    finish = session_limits.get(trace["id"], "stop")
    if trace["stop_condition"] == "max_turns":
        finish = "max_turns"
    elif trace["is_truncated"] and finish == "stop":
        finish = "length"
    if trace["reward"] is None:  # never read as 0: a failure, counted
        return Episode((), (), "error", f"verifiers: trace {trace['id']} has no reward")
    return episode_from_rows(rows, finish, None, outcome(trace))


def outcome(trace: dict[str, Any]) -> dict[str, float]:
    """The trace's reward as openrft grades an agent's return value: "score" (verifiers'
    weighted sum), each reward function's score and each metric (the ones it computed)."""
    result = {"score": float(trace["reward"])}
    for name, reward in trace["rewards"].items():
        if reward is not None and reward.get("score") is not None:
            result[name] = float(reward["score"])
    for name, value in trace["metrics"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            result.setdefault(name, float(value))
    return result


def task_examples(tasks: Sequence[dict[str, Any]], taskset: str) -> list[Example]:
    """The worker's tasks as rows: the prompt as messages (verifiers' system prompt first),
    the task's `answer` as the reference answer, its other data as metadata."""
    examples = []
    for task in tasks:
        prompt = task["prompt"]
        messages: list[dict[str, Any]] = []
        if task.get("system_prompt"):
            messages.append({"role": "system", "content": task["system_prompt"]})
        if isinstance(prompt, str):
            messages.append({"role": "user", "content": prompt})
        elif isinstance(prompt, list):
            messages.extend(_openai_message(m) for m in prompt)
        idx = task["idx"]
        examples.append(
            Example(
                id=str(task.get("id") or f"{taskset}:{idx}"),
                messages=tuple(messages),  # type: ignore[arg-type]
                reference_answer=task.get("answer"),
                metadata={**task.get("data", {}), TASK_KEY: idx},
                source=f"verifiers taskset {taskset}, task {idx}",
            )
        )
    return examples


def _openai_message(message: dict[str, Any]) -> dict[str, Any]:
    """A verifiers message in OpenAI's shape (a tool call's name and arguments under
    "function"), as openrft's rows and chat templates have them."""
    calls = message.get("tool_calls")
    if not calls:
        return {k: v for k, v in message.items() if v is not None}
    nested = [
        {
            "id": call.get("id"),
            "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]},
        }
        for call in calls
    ]
    return {**{k: v for k, v in message.items() if v is not None}, "tool_calls": nested}
