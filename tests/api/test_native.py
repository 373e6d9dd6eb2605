"""The native API without running jobs: auth, files, job creation and validation, listing,
stop/resume/delete of queued jobs, run-directory file access."""

from __future__ import annotations

import stat

import httpx
import pytest
import tomli_w

from openrft.api import create_app

from .helpers import job_config


def test_auth(idle_server, tmp_path):
    url = idle_server.url
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    missing = httpx.get(f"{url}/api/jobs")
    assert missing.status_code == 401 and "missing bearer token" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(f"{url}/api/jobs", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json() == {"detail": "wrong bearer token"}
    assert httpx.post(f"{url}/api/jobs", json={}).status_code == 401
    assert httpx.get(f"{url}/v1/fine_tuning/jobs").status_code == 401
    assert httpx.get(f"{url}/model-customization-jobs").status_code == 401
    assert idle_server.client.get("/api/jobs").json() == {"data": []}
    in_url = httpx.get(f"{url}/api/jobs", params={"token": idle_server.token})
    assert in_url.status_code == 401 and "Authorization header" in in_url.json()["detail"]
    token_file = idle_server.data_dir / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert create_app(idle_server.data_dir, start_runner=False).state.token == idle_server.token


def test_files_upload_list_download(idle_server):
    client = idle_server.client
    content = b'{"messages": []}\n' * 3
    record = client.post(
        "/api/files", files={"file": ("../../evil name.jsonl", content)}, data={"purpose": "x"}
    ).json()
    assert record["id"].startswith("file-") and record["bytes"] == len(content)
    assert record["filename"] == "evil_name.jsonl" and record["purpose"] == "x"
    stored = idle_server.data_dir / "files" / record["id"] / "evil_name.jsonl"
    assert stored.read_bytes() == content
    assert client.get("/api/files").json()["data"] == [record]
    assert client.get(f"/api/files/{record['id']}").json() == record
    assert client.get(f"/api/files/{record['id']}/content").content == content
    assert client.get("/api/files/file-0123456789abcdef").status_code == 404
    assert client.get("/api/files/..%2Ftoken/content").status_code == 404


def test_create_list_get(idle_server, tmp_path, tiny_model_dir):
    client = idle_server.client
    config = job_config(tmp_path / "job", tiny_model_dir)
    first = client.post("/api/jobs", json={"config": config, "name": "first"})
    assert first.status_code == 201, first.text
    job = first.json()
    assert job["status"] == "Queued" and job["name"] == "first" and job["source"] == "native"
    assert job["config"]["train"]["max_steps"] == 3 and job["config"]["algo"]["clip_low"] == 0.2
    assert job["status_details"] == dict.fromkeys(
        ("validation", "dataProcessing", "training"), "NotStarted"
    )
    assert job["run_dir"] == str(idle_server.data_dir.resolve() / "jobs" / job["id"])
    second = client.post("/api/jobs", json={"config_toml": tomli_w.dumps(config)}).json()
    assert second["name"] == "tiny"  # the config's name
    listed = client.get("/api/jobs").json()["data"]
    assert [j["id"] for j in listed] == [second["id"], job["id"]]
    assert client.get(f"/api/jobs/{job['id']}").json()["id"] == job["id"]
    assert client.get("/api/jobs", params={"status": "Completed"}).json() == {"data": []}
    assert client.get("/api/jobs", params={"status": "Done"}).status_code == 400
    assert client.get("/api/jobs/job-ffffffffffff").status_code == 404
    assert client.get("/api/jobs/../token").status_code == 404
    file = client.get(f"/api/jobs/{job['id']}/files/config.toml")
    assert file.status_code == 200 and "max_steps = 3" in file.text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: c["train"].update(learning_rate=5.0), "train.learning_rate"),
        (lambda c: c["train"].update(learnin_rate=1e-3), "train.learnin_rate"),
        (lambda c: c["rollout"].update(samples_per_prompt="8"), "rollout.samples_per_prompt"),
        (lambda c: c["data"].update(train_file="file-0123456789abcdef"), "data.train_file"),
        (lambda c: c["data"].update(validation_file="/no/such.jsonl"), "data.validation_file"),
        (lambda c: c["reward"].update(grader="file-0123456789abcdef:reward"), "reward.grader"),
    ],
)
def test_bad_config_is_422_naming_the_field(idle_server, tmp_path, tiny_model_dir, change, field):
    config = job_config(tmp_path / "job", tiny_model_dir)
    change(config)
    response = idle_server.client.post("/api/jobs", json={"config": config})
    assert response.status_code == 422
    assert response.json()["detail"].startswith(f"config field '{field}'")
    assert idle_server.client.get("/api/jobs").json() == {"data": []}
    assert not (idle_server.data_dir / "jobs").exists() or not any(
        (idle_server.data_dir / "jobs").iterdir()
    )


def test_bad_request_bodies(idle_server):
    client = idle_server.client
    assert client.post("/api/jobs", json={}).status_code == 422
    response = client.post("/api/jobs", json={"config_toml": "train = ["})
    assert response.status_code == 422 and "config_toml" in response.json()["detail"]
    assert client.post("/api/jobs", content=b"not json").status_code == 422


def test_stop_resume_delete_a_queued_job(idle_server, tmp_path, tiny_model_dir):
    client = idle_server.client
    job = client.post("/api/jobs", json={"config": job_config(tmp_path, tiny_model_dir)}).json()
    stopped = client.post(f"/api/jobs/{job['id']}/stop").json()
    assert stopped["status"] == "Stopped" and stopped["ended_at"]
    assert client.post(f"/api/jobs/{job['id']}/stop").status_code == 409
    assert client.post(f"/api/jobs/{job['id']}/resume").json()["status"] == "Queued"
    assert client.post(f"/api/jobs/{job['id']}/resume").status_code == 409
    events = client.get(f"/api/jobs/{job['id']}/events").json()["data"]
    assert [e["data"].get("to") for e in events] == [None, "Stopped", "Queued"]
    assert (
        client.get(f"/api/jobs/{job['id']}/events", params={"after": events[1]["seq"]}).json()[
            "data"
        ]
        == events[2:]
    )
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert client.get(f"/api/jobs/{job['id']}").status_code == 404
    assert not (idle_server.data_dir / "jobs" / job["id"]).exists()


def test_run_files_refuse_path_traversal(idle_server, tmp_path, tiny_model_dir):
    client = idle_server.client
    job = client.post("/api/jobs", json={"config": job_config(tmp_path, tiny_model_dir)}).json()
    base = f"/api/jobs/{job['id']}/files"
    for path in ("..%2F..%2Ftoken", "%2E%2E/%2E%2E/token", "sub/..%2F..%2F..%2Ftoken"):
        response = client.get(f"{base}/{path}")
        assert response.status_code == 400, path
        assert "'..'" in response.json()["detail"]
    headers = {"Authorization": f"Bearer {idle_server.token}"}
    raw = httpx.get(f"{idle_server.url}{base}/../../token", headers=headers)
    assert raw.status_code == 404 and idle_server.token not in raw.text
    assert client.get(f"{base}/nope.md").status_code == 404
    assert (
        client.get(f"{base}/config.toml", params={"offset": 5}).content
        == ((idle_server.data_dir / "jobs" / job["id"] / "config.toml").read_bytes()[5:])
    )
    for path in ("metrics", "rollouts/steps", "checkpoints"):
        assert client.get(f"/api/jobs/{job['id']}/{path}").status_code == 200


def test_openapi_document_needs_the_token(idle_server):
    client = idle_server.client
    assert httpx.get(f"{idle_server.url}/openapi.json").status_code == 401
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/jobs" in paths and "/v1/fine_tuning/jobs" in paths
    assert "/model-customization-jobs" in paths
    assert httpx.get(f"{idle_server.url}/health").status_code == 200  # the one open route
