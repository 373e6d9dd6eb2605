"""Timeouts that stop the work, for environments: a user's environment lives in a worker
process (env.isolation = "process", the default), so a step that spins or sleeps past the
episode's time is stopped by killing its worker, and a crash costs one episode. Counted with
psutil: after a timeout no killed worker, no extra thread, and no CPU is left."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from process_counts import children, gone, threads
from process_counts import wait_until as wait_briefly
from tiny_model import build_tool_tokenizer

from openrft.config import load_config
from openrft.data.render import encode_prompt
from openrft.errors import ConfigError
from openrft.rollout.environment import EnvironmentWorkers, user_environments
from openrft.rollout.episodes import run_episodes
from openrft.train.episodes import episode_job
from openrft.types import Example, SamplingParams

from .test_episodes import END, ScriptedPolicy

ENV_PY = """
import asyncio, ctypes, os, time

class Game:
    \"\"\"Two turns of feedback; a row's "kind" makes its step misbehave instead.\"\"\"

    def __init__(self, item):
        self.kind = item.get("kind", "")
        self.length = item.get("length", 2)
        self.turns = 0

    def reset(self):
        return [{"role": "user", "content": f"play {item_text(self.kind)}"}]

    def step(self, message):
        self.turns += 1
        if self.kind == "spin":
            while True:
                pass
        if self.kind == "sleep":
            time.sleep(600)
        if self.kind == "exit":
            os._exit(3)
        if self.kind == "segv":
            ctypes.string_at(0)
        if self.kind == "raise":
            raise ValueError("bad move")
        if self.kind == "nonjson":
            return {"messages": [], "done": True, "metrics": {"x": object()}}
        return {
            "messages": [{"role": "user", "content": f"turn {self.turns}: {message['content']}"}],
            "reward": 0.25 * self.turns,
            "done": self.turns >= self.length,
            "metrics": {"turns": self.turns},
        }

class AsyncGame(Game):
    async def step(self, message):
        await asyncio.sleep(0)
        return Game.step(self, message)

def item_text(kind):
    return kind or "well"

def make_env(item):
    return Game(item)

def make_async_env(item):
    return AsyncGame(item)
"""


RAISES = [n for n, line in enumerate(ENV_PY.splitlines(), 1) if "bad move" in line][0]
STEP_ERROR = f"step() raised ValueError('bad move') (line {RAISES} of game_env.py)"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tool_tokenizer()


@pytest.fixture(scope="module")
def env_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("env") / "game_env.py"
    path.write_text(ENV_PY)
    return path


def row(kind: str = "", index: int = 0, length: int = 2) -> Example:
    metadata = {"kind": kind, "length": length}
    return Example(f"r{index}", ({"role": "user", "content": "play"},), "5", metadata)


def wait_until(check, within_s: float = 5.0) -> bool:
    return wait_briefly(check, within_s)  # environment workers get longer than graders


def run(tokenizer, reference, rows, isolation="process", overrides=(), n=1, environments=None):
    """The rows' episodes (n each) against a scripted policy; returns (groups, environments).
    `environments` (kept open) is reused when given, else made here and closed."""
    config = load_config(None, [f"env.environment={reference}", *overrides])
    job = episode_job(config, tokenizer, frozenset({tokenizer.convert_tokens_to_ids(END)}))
    owned = environments is None
    if owned:
        environments = user_environments(reference, isolation, config.env.episode_timeout_s)
    setup = replace(job.setup, make_env=lambda example: environments.make(example.item()))
    prompts = [encode_prompt(r.messages, tokenizer, "model") for r in rows]
    policy = ScriptedPolicy(tokenizer, lambda seq, turn: f"move {seq}.{turn}")
    try:
        groups = run_episodes(policy, rows, prompts, SamplingParams(n=n), setup)
    finally:
        job.close()
        if owned:
            environments.close()
    return groups, environments


@pytest.mark.parametrize("kind", ["spin", "sleep"])
def test_a_hung_step_is_stopped_at_the_episode_timeout(tokenizer, env_file, kind):
    reference = f"{env_file}:make_env"
    environments = user_environments(reference, "process", 1.0)
    try:
        # Three warm workers. The other episodes end at their first step: the scripted policy
        # moves all episodes in lockstep, so a second turn would come after the timeout.
        rows = [row("", 0, 1), row(kind, 1), row("", 2, 1)]
        run(tokenizer, reference, [row("", i) for i in range(3)], environments=environments)
        baseline_threads = threads()
        others = children() - set(environments.pids())  # other tests' workers
        before = set(environments.pids())
        started = time.monotonic()
        groups, _ = run(
            tokenizer,
            reference,
            rows,
            overrides=["env.episode_timeout_s=1"],
            environments=environments,
        )
        took = time.monotonic() - started
        finishes = [group[0].finish_reason for group in groups]
        assert finishes == ["stop", "timeout", "stop"]
        assert [len(group[0].episode.turns) for group in groups] == [1, 1, 1]
        assert took < 10  # the 1 s timeout, not the step's 600 s or forever
        # The hung step's worker is gone; the others were kept for later episodes, and idle.
        killed = before - set(environments.pids())
        assert len(killed) == 1 and all(gone(pid) for pid in killed)
        assert wait_until(lambda: threads() <= baseline_threads)
        assert wait_until(lambda: children() - others == set(environments.pids()))
        cpu = {pid: psutil.Process(pid).cpu_times() for pid in environments.pids()}
        time.sleep(0.5)
        for pid, times in cpu.items():
            later = psutil.Process(pid).cpu_times()
            assert later.user + later.system - times.user - times.system < 0.1
        # A fresh worker takes the killed one's place next time.
        groups, _ = run(tokenizer, reference, [row(), row("", 1)], environments=environments)
        assert [g[0].finish_reason for g in groups] == ["stop", "stop"]
    finally:
        environments.close()
    assert wait_until(lambda: not children() - others)


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("exit", "the worker process exited with status 3"),
        ("segv", "killed by SIGSEGV"),
        ("raise", STEP_ERROR),
        ("nonjson", "step(): the answer cannot be sent as JSON"),
    ],
)
def test_a_crashing_or_raising_step_costs_its_episode_only(tokenizer, env_file, kind, fragment):
    groups, _ = run(tokenizer, f"{env_file}:make_env", [row(), row(kind, 1), row("", 2)])
    finishes = [group[0].finish_reason for group in groups]
    assert finishes == ["stop", "error", "stop"]
    assert fragment in groups[1][0].episode.error


def test_the_step_error_names_file_and_line_in_a_thread_too(tokenizer, env_file):
    groups, _ = run(tokenizer, f"{env_file}:make_env", [row("raise")], isolation="thread")
    assert groups[0][0].episode.error == STEP_ERROR


@pytest.mark.parametrize("factory", ["make_env", "make_async_env"])
def test_process_and_thread_isolation_give_the_same_episodes(tokenizer, env_file, factory):
    rows = [row("", i) for i in range(3)]
    results = {}
    for isolation in ("process", "thread"):
        groups, _ = run(tokenizer, f"{env_file}:{factory}", rows, isolation, n=2)
        results[isolation] = [
            (c.finish_reason, c.token_ids, c.episode.messages(), c.episode.env_metrics())
            for group in groups
            for c in group
        ]
    assert results["process"] == results["thread"]
    assert all(finish == "stop" for finish, *_ in results["process"])
    assert results["process"][0][2][0]["content"] == "play well"  # reset() opened it


def test_workers_are_reused_across_episodes(tokenizer, env_file):
    reference = f"{env_file}:make_env"
    environments = user_environments(reference, "process", 60.0)
    try:
        run(tokenizer, reference, [row("", i) for i in range(2)], environments=environments)
        pids = set(environments.pids())
        assert len(pids) == 2  # one per live episode
        run(tokenizer, reference, [row("", i) for i in range(2)], environments=environments)
        assert set(environments.pids()) == pids  # no new process per episode
    finally:
        environments.close()
    assert all(gone(pid) for pid in pids)


def test_a_file_a_worker_cannot_import_names_the_opt_in(monkeypatch, tmp_path):
    module = type(sys)("rft_env_made_at_runtime")
    module.make_env = lambda item: None  # e.g. built by the trainer's own code
    monkeypatch.setitem(sys.modules, "rft_env_made_at_runtime", module)
    with pytest.raises(ConfigError) as caught:
        user_environments("rft_env_made_at_runtime:make_env")
    message = str(caught.value)
    assert "not in a worker process" in message and "rft_env_made_at_runtime" in message
    assert 'env.isolation = "thread"' in message
    # The thread opt-in loads it here.
    assert user_environments("rft_env_made_at_runtime:make_env", "thread").factory is not None
    # A file that fails everywhere gets the plain error, not the opt-in.
    (tmp_path / "broken_env.py").write_text("raise RuntimeError('no simulator here')\n")
    with pytest.raises(ConfigError, match="no simulator here") as caught:
        user_environments(f"{tmp_path / 'broken_env.py'}:make_env")
    assert "isolation" not in str(caught.value)


def test_make_env_that_raises_is_an_error_episode_and_keeps_its_worker(tokenizer, tmp_path):
    path = tmp_path / "bad_env.py"
    path.write_text("def make_env(item):\n    raise KeyError('x')\n")
    environments = user_environments(f"{path}:make_env")
    assert isinstance(environments, EnvironmentWorkers)
    try:
        [pid] = environments.pids()
        groups, _ = run(tokenizer, f"{path}:make_env", [row()], environments=environments)
        assert groups[0][0].finish_reason == "error"
        assert "make_env raised KeyError('x') (line 2 of bad_env.py)" in groups[0][0].episode.error
        assert environments.pids() == [pid]
    finally:
        environments.close()


def test_isolation_is_an_env_field():
    assert load_config(None, []).env.isolation == "process"
    with pytest.raises(ConfigError, match="env.isolation"):
        load_config(None, ["env.isolation=fork"])


def test_a_step_holding_the_gil_in_c_is_stopped_too(tokenizer, tmp_path):
    """Catastrophic regex backtracking: C code that never releases the GIL."""
    path = tmp_path / "regex_env.py"
    path.write_text(
        textwrap.dedent(
            """
            import re

            class Env:
                def step(self, message):
                    re.match(r"(a*)*b", "a" * 64)

            def make_env(item):
                return Env()
            """
        )
    )
    started = time.monotonic()
    groups, _ = run(tokenizer, f"{path}:make_env", [row()], overrides=["env.episode_timeout_s=1"])
    assert groups[0][0].finish_reason == "timeout"
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("kind", ["spin", "regex"])
def test_no_worker_outlives_a_killed_trainer(tmp_path, kind):
    """The trainer gets SIGKILL while a step spins: no time to clean up. "regex" holds the GIL
    in C, so only the parent-death signal (not the worker's watchdog thread) can end it."""
    path = tmp_path / "stuck_env.py"
    path.write_text(
        textwrap.dedent(
            """
            import re

            class Env:
                def __init__(self, kind):
                    self.kind = kind

                def step(self, message):
                    while self.kind == "spin":
                        pass
                    re.match(r"(a*)*b", "a" * 64)

            def make_env(item):
                return Env(item["kind"])
            """
        )
    )
    script = f"""
    from openrft.rollout.environment import user_environments
    from openrft.rollout.tool_calls import ParsedTurn
    environments = user_environments({f"{path}:make_env"!r}, "process", 600)
    env = environments.make({{"kind": {kind!r}}})
    print(env.worker.process.pid, flush=True)
    env.step(ParsedTurn("go"))
    """
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True
    )
    try:
        worker = int(parent.stdout.readline())
        assert wait_until(lambda: psutil.Process(worker).cpu_percent(0.05) > 50)  # busy
    finally:
        parent.kill()
        parent.wait()
    assert wait_until(lambda: gone(worker)), f"worker {worker} outlived its parent"
