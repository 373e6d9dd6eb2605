"""The job API and `openrft serve` under load, on loopback, in one script.

1. Job API. Starts `openrft server` (a subprocess, its own data directory) and one real job
   (`--model`: by default a tiny random Llama, tests/tiny_model.py, whose steps take about a
   second here; SST-2 prompts; steps enough to outlast the run), waits until it has trained a
   few steps, then measures its step time ALONE (`--alone-seconds`), UNDER LOAD (`--clients`
   concurrent clients for `--seconds`) and ALONE again (to bracket the neighbours' noise).
   The clients are asyncio tasks over one httpx.AsyncClient in this process: `--sse-share`
   of them hold the running job's metrics stream (`/metrics/stream`, reconnecting from the
   last step when it ends) and count its events; the others loop, each doing one of: list
   (GET /api/jobs), get (/api/jobs/{id}), metrics (/metrics?after=N, following the cursor as
   the dashboard does), steps (/rollouts/steps), rollouts (/rollouts?step=N), then thinking
   a random 0..2x`--think` seconds (the dashboard polls every 2-3 s; the default 1 s is heavier;
   `--think 0` is a closed loop: as fast as the server answers).
   Printed per route kind: requests, req/s, p50, p99 and max latency, errors (with the first
   message of each kind); the step time alone and under load and their ratio; and where the
   CPU went in the load window (server, training worker, this load generator, the rest of the
   machine), from /proc. Goal (issue 20): zero errors, p99 < 200 ms, step time +10% at most.

2. Chat. Starts `openrft serve --model M` (`--chat-model`, SmolLM2-135M) and fires
   `--chat-clients` concurrent chat completions (after one warm-up request): requests,
   completion tokens/s, p50/p99, errors.

The load generator, the server and the worker share this machine's cores: on a small machine
the generator's own CPU slows the worker too. `--pin-client CPUS`, `--pin-server CPUS` and
`--pin-worker CPUS` (e.g. `--pin-client 1 --pin-server 1 --pin-worker 0`) pin each side to
cores (sched_setaffinity, every thread) so the split can be shown. One process drives all
the clients: at 170 req/s it used a fifth of a core; the printed lag of its own event loop
shows how much of each latency is the generator's.

    .venv/bin/python bench/api_load.py [--clients 200] [--seconds 60] [--think 1.0]
        [--sse-share 0.1] [--model tiny|ALIAS|DIR] [--chat-model ALIAS] [--chat-clients 64]
        [--skip-chat] [--pin-client CPUS --pin-server CPUS --pin-worker CPUS]
    .venv/bin/python bench/api_load.py --seconds 10 --clients 50 --skip-chat   # quick try
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")
KINDS = {"list": 0.2, "get": 0.25, "metrics": 0.3, "steps": 0.1, "rollouts": 0.15}


# -- processes and CPU -------------------------------------------------------------------------


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "openrft.cli", *args]


def wait_http(url: str, process: subprocess.Popen, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer {url} within {timeout_s:.0f} s")


def start_job_server(data_dir: Path) -> tuple[subprocess.Popen, str, str]:
    log = (data_dir.parent / "server.log").open("w")
    command = cli("server", "--port", "0", "--data-dir", str(data_dir))
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (data_dir / "server.json").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the job server did not start: see {log.name}")
        time.sleep(0.1)
    url = json.loads((data_dir / "server.json").read_text())["url"]
    wait_http(f"{url}/health", process, 60, "the job server")
    return process, url, (data_dir / "token").read_text().strip()


def stop(process: subprocess.Popen, timeout_s: float = 60) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tree(pid: int) -> list[int]:
    """pid and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (their threads included)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def machine_cpu_s() -> float:
    """CPU seconds every core spent busy (not idle or iowait) since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / TICKS


def pin(pid: int, cpus: str | None) -> None:
    """Pin every thread of pid and of its descendants to CPUS ("0", "0,1", "0-1")."""
    if not cpus:
        return
    wanted: set[int] = set()
    for part in cpus.split(","):
        low, _, high = part.partition("-")
        wanted.update(range(int(low), int(high or low) + 1))
    for process in tree(pid):
        for task in Path(f"/proc/{process}/task").glob("*"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), wanted)


# -- the job -------------------------------------------------------------------------------------


def job_config(model: str) -> dict:
    return {
        "name": "api-load",
        "model": {"name": model},
        "data": {"train_file": "builtin:sst2/train", "validation_file": "builtin:sst2/validation"},
        "reward": {"grader": "exact_label"},
        "rollout": {"samples_per_prompt": 4, "max_new_tokens": 8},
        "train": {"prompts_per_step": 4, "micro_batch_size": 16, "max_steps": 100_000},
        "eval": {"interval": 0, "max_prompts": 2, "samples_per_prompt": 1, "baseline_prompts": 0},
        "checkpoint": {"interval": 0},
    }


def tiny_model(directory: Path) -> str:
    sys.path.insert(0, str(ROOT))
    from tests.tiny_model import make_tiny_model_dir

    return str(make_tiny_model_dir(directory / "tiny-model"))


SEEN: dict[str, int] = {}  # the last step read of each job: the cursor of last_step


def last_step(api: httpx.Client, job_id: str) -> int:
    """The job's last step written to metrics.jsonl (-1: none yet)."""
    after = SEEN.get(job_id, -1)
    SEEN[job_id] = api.get(f"/api/jobs/{job_id}/metrics", params={"after": after}).json()[
        "last_step"
    ]
    return SEEN[job_id]


def wait_steps(api: httpx.Client, job_id: str, steps: int, timeout_s: float = 900) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = api.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("Failed", "Completed", "Stopped"):
            raise RuntimeError(f"the job ended: {job['status']} {job['failure_message']}")
        done = last_step(api, job_id)
        if done >= steps:
            return done
        time.sleep(0.5)
    raise RuntimeError(f"the job did not reach step {steps} within {timeout_s:.0f} s")


def step_times(api: httpx.Client, job_id: str, first: int, last: int) -> list[float]:
    """time/step_s of steps first..last: the steps that ran wholly inside a window."""
    lines = api.get(f"/api/jobs/{job_id}/metrics", params={"after": first - 1}).json()["data"]
    return [m["time/step_s"] for m in lines if first <= m["step"] <= last and "time/step_s" in m]


def window_alone(api: httpx.Client, job_id: str, seconds: float, min_steps: int) -> list[float]:
    """Step times of the steps that started and ended inside a window of at least `seconds`
    and `min_steps` whole steps."""
    start = last_step(api, job_id) + 1  # the step running now started before the window
    time.sleep(seconds)
    end = wait_steps(api, job_id, start + min_steps - 1)
    return step_times(api, job_id, start, end)


# -- the load ------------------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def fail(self, message: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or message[:160]


@dataclass
class Load:
    client: httpx.AsyncClient
    job_id: str
    think: float
    until: float
    tallies: dict[str, Tally] = field(default_factory=lambda: {k: Tally() for k in KINDS})
    sse_events: int = 0
    lag: list[float] = field(default_factory=list)  # this process's event loop, late by
    sse_reconnects: int = 0
    known_steps: list[int] = field(default_factory=list)

    async def call(self, kind: str, path: str, params: dict | None = None) -> dict | None:
        tally, started = self.tallies[kind], time.monotonic()
        try:
            response = await self.client.get(path, params=params)
        except httpx.HTTPError as exc:
            tally.fail(f"{type(exc).__name__}: {exc}")
            return None
        if response.status_code != 200:
            tally.fail(f"{response.status_code}: {response.text}")
            return None
        tally.latencies.append(time.monotonic() - started)
        return response.json()

    async def poller(self, rng: random.Random) -> None:
        cursor: int | None = None
        jobs = f"/api/jobs/{self.job_id}"
        await asyncio.sleep(rng.uniform(0, 2 * self.think))  # no thundering herd at start
        while time.monotonic() < self.until:
            kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
            if kind == "list":
                await self.call(kind, "/api/jobs")
            elif kind == "get":
                await self.call(kind, jobs)
            elif kind == "metrics":
                params = {} if cursor is None else {"after": cursor}
                body = await self.call(kind, f"{jobs}/metrics", params)
                cursor = body["last_step"] if body else cursor
            elif kind == "steps":
                body = await self.call(kind, f"{jobs}/rollouts/steps")
                if body and body["steps"]:
                    self.known_steps = body["steps"]
            elif self.known_steps:
                step = rng.choice(self.known_steps[-20:])
                await self.call(kind, f"{jobs}/rollouts", {"step": step})
            if self.think:
                await asyncio.sleep(rng.uniform(0, 2 * self.think))

    async def lag_probe(self) -> None:
        """How late this process's own event loop wakes: latency it adds to every request."""
        while time.monotonic() < self.until:
            started = time.monotonic()
            await asyncio.sleep(0.05)
            self.lag.append(time.monotonic() - started - 0.05)

    async def stream(self) -> None:
        """Hold the job's metrics stream open; reconnect after its end from the last step."""
        tally, after = self.tallies.setdefault("sse", Tally()), None
        while time.monotonic() < self.until:
            started, first = time.monotonic(), True
            params = {} if after is None else {"after": after}
            try:
                path = f"/api/jobs/{self.job_id}/metrics/stream"
                async with self.client.stream("GET", path, params=params) as response:
                    if response.status_code != 200:
                        tally.fail(f"{response.status_code}: {(await response.aread())[:160]}")
                        await asyncio.sleep(1)
                        continue
                    async for line in response.aiter_lines():
                        if first:
                            tally.latencies.append(time.monotonic() - started)  # 1st event
                            first = False
                        if line.startswith("event:"):
                            self.sse_events += 1
                        elif line.startswith("data:") and '"step"' in line[:20]:
                            after = json.loads(line[5:]).get("step", after)
            except httpx.ReadTimeout:
                pass  # no event for the read timeout (heartbeats are 15 s apart)
            except httpx.HTTPError as exc:
                tally.fail(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1)
            self.sse_reconnects += 1


async def run_load(url: str, token: str, job_id: str, args: argparse.Namespace) -> Load:
    limits = httpx.Limits(max_connections=args.clients + 8, max_keepalive_connections=None)
    headers = {"Authorization": f"Bearer {token}"}
    timeout = httpx.Timeout(args.request_timeout, pool=args.request_timeout)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=timeout
    ) as client:
        load = Load(client, job_id, args.think, time.monotonic() + args.seconds)
        load.tallies["sse"] = Tally()
        body = await load.call("steps", f"/api/jobs/{job_id}/rollouts/steps")
        load.known_steps = body["steps"] if body else []
        streams = round(args.clients * args.sse_share)
        tasks = [asyncio.create_task(load.lag_probe())]
        tasks += [asyncio.create_task(load.stream()) for _ in range(streams)]
        tasks += [
            asyncio.create_task(load.poller(random.Random(i)))
            for i in range(args.clients - streams)
        ]
        await asyncio.sleep(args.seconds)
        await asyncio.sleep(min(args.request_timeout, 5))  # let the last requests finish
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return load


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def print_tallies(load: Load, seconds: float) -> None:
    print(f"{'route':<13}{'requests':>9}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
          f"{'errors':>8}  first error")  # fmt: skip
    every = Tally()
    for kind, tally in load.tallies.items():
        every.latencies += [] if kind == "sse" else tally.latencies
        every.errors += tally.errors
        every.first_error = every.first_error or tally.first_error
        print_row(kind, tally, seconds)
    print_row("all (no sse)", every, seconds)
    lag = [v * 1000 for v in load.lag]
    print(f"this load generator's event loop woke late by p50 {percentile(lag, 0.5):.1f} ms, "
          f"p99 {percentile(lag, 0.99):.1f} ms, max {max(lag, default=0):.1f} ms: in every "
          "latency above")  # fmt: skip
    print(f"sse: latency = time to the first event; {load.sse_events} events received, "
          f"{load.sse_reconnects} streams ended and reopened")  # fmt: skip


def print_row(kind: str, tally: Tally, seconds: float) -> None:
    ms = [v * 1000 for v in tally.latencies]
    top = max(ms, default=float("nan"))
    print(f"{kind:<13}{len(ms) + tally.errors:>9}{len(ms) / seconds:>8.1f}"
          f"{percentile(ms, 0.5):>8.1f}{percentile(ms, 0.99):>8.1f}{top:>8.1f}"
          f"{tally.errors:>8}  {tally.first_error}")  # fmt: skip


def job_api(args: argparse.Namespace, scratch: Path) -> None:
    model = tiny_model(scratch) if args.model == "tiny" else args.model
    data_dir = scratch / "data"
    server, url, token = start_job_server(data_dir)
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    try:
        pin(server.pid, args.pin_server)
        job = api.post("/api/jobs", json={"config": job_config(model)}).json()
        job_id = job["id"]
        print(f"job {job_id} on {args.model}: waiting for step {args.warmup_steps}", flush=True)
        wait_steps(api, job_id, args.warmup_steps)
        worker = api.get(f"/api/jobs/{job_id}").json()["pid"]
        pin(worker, args.pin_worker)
        alone = window_alone(api, job_id, args.alone_seconds, args.min_steps)
        print(f"alone: {len(alone)} steps, median {statistics.median(alone):.2f} s", flush=True)

        before = last_step(api, job_id) + 1
        workers = tree(worker)
        cpu0 = (cpu_s([server.pid]), cpu_s(workers), cpu_s([os.getpid()]), machine_cpu_s())
        if args.pin_client:
            pin(os.getpid(), args.pin_client)
        started = time.monotonic()
        load = asyncio.run(run_load(url, token, job_id, args))
        elapsed = time.monotonic() - started
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
        cpu1 = (cpu_s([server.pid]), cpu_s(workers), cpu_s([os.getpid()]), machine_cpu_s())
        after = last_step(api, job_id)
        loaded = step_times(api, job_id, before, after)
        alone += window_alone(api, job_id, args.alone_seconds, args.min_steps)
    finally:
        api.close()
        stop(server)

    print(f"\n1. Job API: {args.clients} clients ({round(args.clients * args.sse_share)} on "
          f"the metrics stream) for {args.seconds:g} s, think 0..{2 * args.think:g} s; "
          f"{os.cpu_count()} cores")  # fmt: skip
    print_tallies(load, args.seconds)
    base = statistics.median(alone)
    if loaded:
        under = statistics.median(loaded)
        print(f"step time: alone {base:.2f} s (median of {len(alone)}), under load "
              f"{under:.2f} s (median of {len(loaded)}): {under / base:.2f}x")  # fmt: skip
    else:
        print(f"step time: alone {base:.2f} s; no step ran wholly inside the load window")
    spent = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    other = spent[3] - sum(spent[:3])
    print(f"CPU in the load window ({elapsed:.0f} s x {os.cpu_count()} cores): "
          + ", ".join(f"{name} {s:.1f} s ({s / elapsed:.0%} of a core)" for name, s in
                      zip(("server", "worker", "load generator", "rest of the machine"),
                          [*spent[:3], other], strict=True)))  # fmt: skip


# -- chat ----------------------------------------------------------------------------------------


async def chat_burst(url: str, clients: int, max_tokens: int) -> tuple[Tally, int, float]:
    tally, tokens = Tally(), 0
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "Say something about the sea."}],
        "max_tokens": max_tokens,
        "temperature": 1.0,
    }

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        started = time.monotonic()
        try:
            response = await client.post("/v1/chat/completions", json=body)
        except httpx.HTTPError as exc:
            tally.fail(f"{type(exc).__name__}: {exc}")
            return
        if response.status_code != 200:
            tally.fail(f"{response.status_code}: {response.text}")
            return
        tally.latencies.append(time.monotonic() - started)
        tokens += response.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await one(client)  # warm-up, not counted
        tally, tokens = Tally(), 0
        started = time.monotonic()
        await asyncio.gather(*(one(client) for _ in range(clients)))
        return tally, tokens, time.monotonic() - started


def chat(args: argparse.Namespace, scratch: Path) -> None:
    from openrft.rollout.vllm_server import free_port

    model = tiny_model(scratch) if args.chat_model == "tiny" else args.chat_model
    port = free_port()
    log = (scratch / "serve.log").open("w")
    command = cli("serve", "--model", model, "--port", str(port))
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", process, 300, "openrft serve")
        tally, tokens, wall = asyncio.run(chat_burst(url, args.chat_clients, args.chat_tokens))
        batches = httpx.get(f"{url}/health").json()["batches_run"] - 1
    finally:
        stop(process)
    print(
        f"\n2. Chat: {args.chat_clients} concurrent requests to `openrft serve --model "
        f"{args.chat_model}` (max_tokens {args.chat_tokens}, temperature 1), {batches} batches"
    )
    ms = [v * 1000 for v in tally.latencies]
    print(
        f"requests {len(ms) + tally.errors}, wall {wall:.1f} s, {len(ms) / wall:.2f} req/s, "
        f"{tokens / wall:.1f} completion tokens/s, p50 {percentile(ms, 0.5):.0f} ms, "
        f"p99 {percentile(ms, 0.99):.0f} ms, errors {tally.errors} {tally.first_error}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--think", type=float, default=1.0, help="mean pause between requests")
    parser.add_argument("--sse-share", type=float, default=0.1, help="clients on the stream")
    parser.add_argument("--request-timeout", type=float, default=10.0)
    parser.add_argument("--model", default="tiny", help="the job's: alias, directory or 'tiny'")
    parser.add_argument("--chat-model", default="smollm2-135m-instruct", help="or 'tiny'")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--alone-seconds", type=float, default=20)
    parser.add_argument("--min-steps", type=int, default=3, help="steps in an alone window")
    parser.add_argument("--chat-clients", type=int, default=64)
    parser.add_argument("--chat-tokens", type=int, default=32)
    parser.add_argument("--skip-chat", action="store_true")
    parser.add_argument("--skip-jobs", action="store_true")
    for side in ("client", "server", "worker"):
        parser.add_argument(f"--pin-{side}", metavar="CPUS", help=f"pin the {side} to CPUS")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    with tempfile.TemporaryDirectory(prefix="openrft-api-load-") as scratch:
        if not args.skip_jobs:
            job_api(args, Path(scratch))
        if not args.skip_chat:
            chat(args, Path(scratch))


if __name__ == "__main__":
    main()
