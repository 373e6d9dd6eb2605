"""Measures env.isolation = "process" against "thread" (docs/agentic.md, docs/reliability.md):

    .venv/bin/python bench/env_isolation.py

- round trip: 16 episodes x 8 steps of a trivial environment, driven by a scripted policy
  (no model): the first batch (workers starting) and the median of 5 more; and 2,000 step()
  calls of one environment, timed alone (the worker's round trip against a method call).
- spin: 4 batches of 16 one-step episodes, one per batch spinning in step() (`while True:
  pass`) with env.episode_timeout_s = 1; then the median of 3 clean batches of 16 x 8 steps,
  and the CPU this process and its children still burn (over 2 s) after them.

Each case runs in a fresh interpreter (a thread that spins cannot be stopped, only exited).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"  # the episode tests' scripted policy
ENV_PY = """
class Counter:
    def __init__(self, item):
        self.spin = item.get("spin", False)
        self.steps = item.get("steps", 8)
        self.turns = 0

    def step(self, message):
        self.turns += 1
        if self.spin:
            while True:
                pass
        return {"messages": [{"role": "user", "content": "ok"}], "reward": 1.0,
                "done": self.turns >= self.steps}

def make_env(item):
    return Counter(item)
"""


def case(name: str, isolation: str, env_file: str) -> dict:
    sys.path.insert(0, str(TESTS))
    import psutil
    from rollout.test_episodes import END, ScriptedPolicy
    from tiny_model import build_tool_tokenizer

    from openrft.config import load_config
    from openrft.data.render import encode_prompt
    from openrft.rollout.environment import user_environments
    from openrft.rollout.episodes import run_episodes
    from openrft.rollout.tool_calls import ParsedTurn
    from openrft.train.episodes import episode_job
    from openrft.types import Example, SamplingParams

    tokenizer = build_tool_tokenizer()
    reference = f"{env_file}:make_env"
    timeout = 1.0 if name == "spin" else 600.0
    overrides = [f"env.environment={reference}", f"env.episode_timeout_s={timeout}"]
    config = load_config(None, [*overrides, "env.max_turns=10"])
    job = episode_job(config, tokenizer, frozenset({tokenizer.convert_tokens_to_ids(END)}))
    environments = user_environments(reference, isolation, timeout)
    setup = replace(job.setup, make_env=lambda example: environments.make(example.item()))

    def batch(steps: int, spinning: int = 0) -> tuple[float, list[str]]:
        """16 episodes of `steps` steps (the first `spinning` spin instead)."""
        rows = [
            Example(f"r{i}", ({"role": "user", "content": "go"},), "", {"steps": steps})
            for i in range(16)
        ]
        rows = [
            replace(r, metadata={**r.metadata, "spin": i < spinning}) for i, r in enumerate(rows)
        ]
        prompts = [encode_prompt(r.messages, tokenizer, "model") for r in rows]
        policy = ScriptedPolicy(tokenizer, lambda seq, turn: "next")
        started = time.perf_counter()
        groups = run_episodes(policy, rows, prompts, SamplingParams(n=1), setup)
        return time.perf_counter() - started, [g[0].finish_reason for g in groups]

    result: dict = {"case": name, "isolation": isolation}
    if name == "round_trip":
        result["first_batch_s"] = round(batch(8)[0], 3)  # it starts the workers
        result["batch_s"] = round(sorted(batch(8)[0] for _ in range(5))[2], 4)  # the median
        env = environments.make({"steps": 10**9})
        turn = ParsedTurn("next")
        started = time.perf_counter()
        for _ in range(2000):
            answer = env.step(turn)
        result["step_us"] = round((time.perf_counter() - started) / 2000 * 1e6, 1)
        assert answer["reward"] == 1.0
        env.close()
    else:
        spin = [batch(1, spinning=1) for _ in range(4)]
        result["spin_batch_s"] = [round(t, 3) for t, _ in spin]
        result["spin_finishes"] = {f: spin[-1][1].count(f) for f in set(spin[-1][1])}
        result["clean_batch_s"] = round(sorted(batch(8)[0] for _ in range(3))[1], 3)
    process = psutil.Process()
    before = process.cpu_times()
    kids = {p.pid: (p, p.cpu_times()) for p in process.children(recursive=True)}
    time.sleep(2.0)
    after = process.cpu_times()
    burned = after.user + after.system - before.user - before.system
    for kid, times in kids.values():
        if kid.is_running():
            now = kid.cpu_times()
            burned += now.user + now.system - times.user - times.system
    result["cpu_after_pct"] = round(burned / 2.0 * 100)
    return result


def main() -> None:
    if len(sys.argv) == 4:
        print(json.dumps(case(*sys.argv[1:])), flush=True)
        os._exit(0)  # a spinning thread (isolation "thread") would keep the interpreter alive
    with tempfile.TemporaryDirectory() as folder:
        env_file = Path(folder) / "counter_env.py"
        env_file.write_text(ENV_PY)
        results = {}
        for name in ("round_trip", "spin"):
            for isolation in ("thread", "process"):
                out = subprocess.run(
                    [sys.executable, __file__, name, isolation, str(env_file)],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=600,
                )
                results[name, isolation] = json.loads(out.stdout.strip().splitlines()[-1])
                print(json.dumps(results[name, isolation]))
    thread, process = results["round_trip", "thread"], results["round_trip", "process"]
    per_step = 1000 * (process["batch_s"] - thread["batch_s"]) / (16 * 8)
    batches = f"{thread['batch_s']:.3f} s thread, {process['batch_s']:.3f} s process"
    print(f"16 episodes x 8 steps: {batches}")
    print(f"  = {per_step:.2f} ms more per step; one step() call: {thread['step_us']} us thread,")
    print(f"  {process['step_us']} us process (the worker's round trip)")


if __name__ == "__main__":
    main()
