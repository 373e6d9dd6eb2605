"""The OpenAI-compatible facade, driven by the real `openai` client: files, reinforcement
jobs with an OpenAI grader JSON (string_check), retrieve, list, events, checkpoints, pause,
resume and cancel, and errors the client raises as its own exception types."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from .helpers import wait_for, wait_job, write_dataset

STRING_CHECK = {
    "type": "string_check",
    "name": "letter",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.reference_answer }}",
    "operation": "like",
}
TINY = {  # openrft settings OpenAI has no name for (extra_body={"openrft_config": ...})
    "rollout": {"max_new_tokens": 6},
    "train": {"max_steps": 3, "micro_batch_size": 4, "threads": 1},
    "eval": {"interval": 0},
    "checkpoint": {"interval": 1},
}


def reinforcement(grader=STRING_CHECK, **hyper) -> dict:
    hyperparameters = {
        "batch_size": 2,
        "compute_multiplier": 0.5,  # x 8 = 4 samples per prompt
        "n_epochs": 1,
        "eval_interval": "auto",
        "reasoning_effort": "default",  # the only value openrft honours (no reasoning mode)
        **hyper,
    }
    settings = {"grader": grader, "hyperparameters": hyperparameters}
    return {"type": "reinforcement", "reinforcement": settings}


def upload(client: OpenAI, tmp_path, rows: int = 24):
    path = write_dataset(tmp_path / f"rows-{rows}", rows=rows)
    with path.open("rb") as f:
        return client.files.create(file=f, purpose="fine-tune")


def create(client: OpenAI, model_dir, training_file: str, **kwargs):
    return client.fine_tuning.jobs.create(
        model=str(model_dir),
        training_file=training_file,
        method=kwargs.pop("method", reinforcement()),
        extra_body={"openrft_config": TINY},
        **kwargs,
    )


def test_files_and_errors(idle_server, tmp_path, tiny_model_dir):
    client = OpenAI(base_url=f"{idle_server.url}/v1", api_key=idle_server.token, max_retries=0)
    file = upload(client, tmp_path)
    assert file.object == "file" and file.filename == "train.jsonl" and file.bytes > 0
    assert client.files.retrieve(file.id).id == file.id
    assert [f.id for f in client.files.list()] == [file.id]
    assert client.files.content(file.id).content.startswith(b'{"messages"')
    hyper = "method.reinforcement.hyperparameters"
    cases = [
        ({"method": {"type": "supervised"}}, "method.type"),
        ({"method": reinforcement({**STRING_CHECK, "operation": "no"})}, "method.reinforcement."
         "grader"),
        ({"method": reinforcement(batch_size=0)}, f"{hyper}.batch_size"),
        ({"method": reinforcement(compute_multiplier=-1)}, f"{hyper}.compute_multiplier"),
        ({"training_file": "file-0123456789abcdef"}, "training_file"),
    ]  # fmt: skip
    for change, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            create(client, tiny_model_dir, **{"training_file": file.id, **change})
        assert caught.value.param == param, caught.value.message
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("job-ffffffffffff")
    wrong = OpenAI(base_url=f"{idle_server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.fine_tuning.jobs.list()


def test_a_job_through_the_openai_client(start_server, tmp_path, tiny_model_dir):
    served = start_server(concurrency=1)
    client = OpenAI(base_url=f"{served.url}/v1", api_key=served.token, max_retries=0)
    train, valid = upload(client, tmp_path), upload(client, tmp_path, rows=4)
    job = create(
        client, tiny_model_dir, train.id, validation_file=valid.id, seed=3, suffix="letters"
    )
    assert job.object == "fine_tuning.job" and job.status in ("queued", "validating_files")
    assert job.hyperparameters.batch_size == 2 and job.seed == 3
    waiting = create(client, tiny_model_dir, train.id)  # concurrency 1: it waits
    assert client.fine_tuning.jobs.retrieve(waiting.id).status == "queued"
    assert client.fine_tuning.jobs.cancel(waiting.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.resume(waiting.id)  # only paused jobs resume

    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    wait_job(served.client, job.id, lambda j: j["status"] == "Stopped", "the pause to end")
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status in ("queued", "validating_files", "running")
    done = wait_status(client, job.id, "succeeded")
    assert done.error is None and done.finished_at and done.fine_tuned_model
    assert (served.data_dir / "jobs" / job.id / "final").is_dir()
    assert done.training_file == train.id and done.validation_file == valid.id
    assert done.method.reinforcement.grader.type == "string_check"

    listed = client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in listed.data] == [waiting.id] and listed.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == [waiting.id, job.id]
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    messages = [e.message for e in events]
    assert any("pause requested" in m for m in messages)
    assert "Completed" in messages[0]  # newest first
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].step_number == 3
    assert checkpoints[0].fine_tuned_model_checkpoint.endswith("step-3")
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)


def wait_status(client: OpenAI, job_id: str, status: str):
    def check():
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status == "failed":
            raise AssertionError(f"job failed: {job.error}")
        return job if job.status == status else None

    return wait_for(check, what=f"{job_id} to be {status}")


def test_agent_rft_tools_become_tool_endpoints():
    """Azure's agent RFT preview: reinforcement.tools [{name, server_url, headers}] and
    max_episode_steps map onto env.tool_endpoints, env.tool_headers and env.max_turns."""
    from openrft.api.openai_compat import openai_config
    from openrft.config import config_from_dict
    from openrft.errors import ConfigError

    method = reinforcement()
    method["reinforcement"] |= {
        "tools": [
            {"name": "search", "server_url": "https://tools.local/search",
             "headers": {"Authorization": "Bearer t"}},
            {"name": "lookup", "server_url": "http://127.0.0.1:9/lookup"},
        ],
        "max_episode_steps": 5,
    }  # fmt: skip
    body = {"model": "m", "training_file": "file-1", "method": method}
    raw, _ = openai_config(body)
    env = config_from_dict(raw).env
    assert env.tool_endpoints == {
        "search": "https://tools.local/search",
        "lookup": "http://127.0.0.1:9/lookup",
    }
    assert env.tool_headers == {"Authorization": "Bearer t"} and env.max_turns == 5
    method["reinforcement"]["tools"] = [{"name": "x", "server_url": "ftp://nope"}]
    with pytest.raises(ConfigError, match=r"tools\[0\].server_url"):
        openai_config(body)
