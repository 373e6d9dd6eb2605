"""External agents through the job server: a real server runs an `env.agent = "external"`
job (a real `openrft train` worker on the tiny model); an agent that knows only the server's
address and token takes rollouts, calls the policy with the plain openai client through the
server (streaming too) and reports rewards, and the job trains on them."""

from __future__ import annotations

import json
import threading

import httpx
import openai

from openrft.paths import AGENT_FILE

from .helpers import job_config, wait_ended, wait_job


def test_taking_a_rollout_needs_the_token(idle_server, tmp_path, tiny_model_dir):
    """Checked before anything is forwarded: here the job's agent proxy does not even exist."""
    config = job_config(tmp_path / "job", tiny_model_dir)
    job = idle_server.client.post("/api/jobs", json={"config": config}).json()
    proxy = {"url": "http://127.0.0.1:9/"}
    (idle_server.data_dir / "jobs" / job["id"] / AGENT_FILE).write_text(json.dumps(proxy))
    take = f"{idle_server.url}/api/jobs/{job['id']}/agent/v1/rollouts"
    assert httpx.post(take).status_code == 401
    assert httpx.post(take, headers={"Authorization": "Bearer nope"}).status_code == 401


def test_an_external_agent_job_runs_through_the_server(start_server, tmp_path, tiny_model_dir):
    served = start_server()
    config = job_config(tmp_path / "job", tiny_model_dir, max_steps=2)
    config["env"] = {"agent": "external", "episode_timeout_s": 120.0}
    job = served.client.post("/api/jobs", json={"config": config, "name": "agents"}).json()
    base = f"{served.url}/api/jobs/{job['id']}/agent/v1/"
    refused = httpx.post(base + "rollouts")  # no token: taking work is the owner's call
    assert refused.status_code in (401, 409)
    done, seen = threading.Event(), {"streamed": 0, "reported": 0}

    def agent() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {served.token}"}) as server:
            while not done.is_set():
                offer = server.post(base + "rollouts", timeout=30)
                if offer.status_code != 200:  # 204: nothing now; 409: not started yet
                    done.wait(0.05)
                    continue
                rollout = offer.json()
                assert rollout["base_url"] == base
                client = openai.OpenAI(base_url=rollout["base_url"], api_key=rollout["api_key"])
                messages = rollout["item"]["messages"]
                if seen["reported"] % 2:
                    chunks = client.chat.completions.create(
                        model="m", messages=messages, stream=True
                    )
                    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                    seen["streamed"] += 1
                else:
                    reply = client.chat.completions.create(model="m", messages=messages)
                    text = reply.choices[0].message.content
                reward = {"reward": float(rollout["item"]["reference_answer"] in text)}
                report = httpx.post(f"{base}rollouts/{rollout['rollout_id']}/reward", json=reward)
                assert report.status_code == 204
                seen["reported"] += 1

    worker = threading.Thread(target=agent, daemon=True)
    worker.start()
    try:
        wait_job(served.client, job["id"], lambda j: j["status"] != "Queued", "the job to start")
        ended = wait_ended(served.client, job["id"])
    finally:
        done.set()
        worker.join(30)
    assert ended["status"] == "Completed", ended
    assert seen["reported"] >= 16 and seen["streamed"] >= 1  # 2 steps x 2 prompts x 4
    metrics = served.client.get(f"/api/jobs/{job['id']}/metrics").json()["data"]
    assert metrics[-1]["reward/error_rate"] == 0 and metrics[-1]["train/tokens_trained"] > 0
    gone = httpx.post(base + "rollouts", headers={"Authorization": f"Bearer {served.token}"})
    assert gone.status_code == 409 and "not taking external agents" in gone.text
