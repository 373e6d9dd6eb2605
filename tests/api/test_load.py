"""Many clients at once against a real server and a running job (what bench/api_load.py does
for a minute, briefly): 50 concurrent clients list and get the job, follow its metrics with a
cursor, read rollout pages and hold its metrics stream, and every request succeeds. The
streams and cursors see each step once, in order. No timing is asserted (bench/ measures)."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx

from .helpers import job_config, wait_for, wait_job

CLIENTS, STREAMS, SECONDS = 50, 5, 3.0


class Load:
    def __init__(self, client: httpx.AsyncClient, job_id: str):
        self.client, self.job = client, f"/api/jobs/{job_id}"
        self.errors: list[str] = []
        self.requests = 0
        self.stream_steps: list[list[int]] = []
        self.cursor_steps: list[list[int]] = []

    async def get(self, path: str, params: dict | None = None) -> dict | None:
        try:
            response = await self.client.get(path, params=params)
        except httpx.HTTPError as exc:
            self.errors.append(f"{path}: {exc!r}")
            return None
        self.requests += 1
        if response.status_code != 200:
            self.errors.append(f"{path}: {response.status_code} {response.text[:200]}")
            return None
        return response.json()

    async def poller(self, seed: int, until: float) -> None:
        rng, cursor, seen = random.Random(seed), -1, []
        self.cursor_steps.append(seen)
        while time.monotonic() < until:
            kind = rng.choice(("list", "get", "metrics", "rollouts"))
            if kind == "list":
                await self.get("/api/jobs")
            elif kind == "get":
                await self.get(self.job)
            elif kind == "metrics":
                body = await self.get(f"{self.job}/metrics", {"after": cursor})
                if body:
                    seen += [m["step"] for m in body["data"]]
                    cursor = body["last_step"]
            else:
                body = await self.get(f"{self.job}/rollouts/steps")
                if body and body["steps"]:
                    await self.get(f"{self.job}/rollouts", {"step": rng.choice(body["steps"])})
            await asyncio.sleep(rng.uniform(0, 0.05))

    async def stream(self, until: float) -> None:
        steps: list[int] = []
        self.stream_steps.append(steps)
        try:
            async with self.client.stream("GET", f"{self.job}/metrics/stream") as response:
                if response.status_code != 200:
                    self.errors.append(f"stream: {response.status_code}")
                    return
                event = ""
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "metrics":
                        steps.append(json.loads(line[6:])["step"])
                    if time.monotonic() > until:
                        return
        except httpx.HTTPError as exc:
            self.errors.append(f"stream: {exc!r}")


async def run_load(url: str, token: str, job_id: str) -> Load:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=CLIENTS + 5)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=60
    ) as client:
        load = Load(client, job_id)
        until = time.monotonic() + SECONDS
        tasks = [load.stream(until) for _ in range(STREAMS)]
        tasks += [load.poller(seed, until) for seed in range(CLIENTS - STREAMS)]
        await asyncio.gather(*tasks)
    return load


def test_fifty_clients_against_a_running_job_get_no_errors(start_server, tmp_path, tiny_model_dir):
    served = start_server()
    config = job_config(tmp_path / "job", tiny_model_dir, max_steps=200, grader="slow")
    job_id = served.client.post("/api/jobs", json={"config": config}).json()["id"]
    wait_job(served.client, job_id, lambda job: job["status"] == "InProgress", "InProgress")
    wait_for(lambda: served.client.get(f"/api/jobs/{job_id}/rollouts/steps").json()["steps"])

    load = asyncio.run(run_load(served.url, served.token, job_id))

    served.client.post(f"/api/jobs/{job_id}/stop")
    assert load.errors == []
    assert load.requests > CLIENTS
    for steps in load.stream_steps + load.cursor_steps:
        assert steps == sorted(set(steps))  # each step once, in order
    assert any(load.stream_steps)  # the streams delivered metrics
