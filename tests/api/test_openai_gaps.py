"""The OpenAI facade's gaps closed, through the real `openai` client: `trained_tokens` and
`result_files` (a CSV of the run's metrics, downloadable as a file) once a job succeeds, and
fields openrft cannot honour (reasoning_effort, the deprecated top-level hyperparameters,
integrations, unknown keys) refused with a 400 naming them instead of dropped."""

from __future__ import annotations

import csv
import io
import json

import openai
import pytest
from openai import OpenAI

from openrft.api.openai_results import metrics_csv, step_records, trained_tokens

from .test_openai import STRING_CHECK, create, reinforcement, upload, wait_status

HYPER = "method.reinforcement.hyperparameters"
SCORE_MODEL = {
    "type": "score_model",
    "name": "judge",
    "model": "gpt-4o-mini",
    "input": [{"role": "user", "content": "Score {{ sample.output_text }}"}],
    "sampling_params": {"reasoning_effort": "low"},
}


def test_unhonoured_fields_are_refused(idle_server, tmp_path, tiny_model_dir):
    client = OpenAI(base_url=f"{idle_server.url}/v1", api_key=idle_server.token, max_retries=0)
    file = upload(client, tmp_path)
    with_format = reinforcement()
    with_format["reinforcement"]["response_format"] = {"type": "json_object"}
    multi = {"type": "multi", "name": "m", "calculate_output": "a + b",
             "graders": {"a": STRING_CHECK, "b": SCORE_MODEL}}  # fmt: skip
    cases = [
        ({"method": reinforcement(reasoning_effort="low")}, f"{HYPER}.reasoning_effort"),
        ({"method": reinforcement(reasoning_effort="max")}, f"{HYPER}.reasoning_effort"),
        ({"hyperparameters": {"n_epochs": 2}}, "hyperparameters"),
        ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations"),
        ({"method": with_format}, "method.reinforcement.response_format"),
        ({"extra_body": {"openrft_config": {}, "priority": "high"}}, "priority"),
        ({"method": reinforcement(SCORE_MODEL)},
         "method.reinforcement.grader.sampling_params.reasoning_effort"),
        ({"method": reinforcement(multi)},
         "method.reinforcement.grader.graders.b.sampling_params.reasoning_effort"),
    ]  # fmt: skip
    for change, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            if "extra_body" in change:
                client.fine_tuning.jobs.create(
                    model=str(tiny_model_dir),
                    training_file=file.id,
                    method=reinforcement(),
                    **change,
                )
            else:
                create(client, tiny_model_dir, file.id, **change)
        error = caught.value
        assert error.status_code == 400 and error.param == param, error.message
        assert error.body["type"] == "invalid_request_error" and param in error.body["message"]
    job = create(client, tiny_model_dir, file.id)  # reasoning_effort "default" is honoured
    assert job.trained_tokens is None and job.result_files == []


def test_result_file_and_trained_tokens(start_server, tmp_path, tiny_model_dir):
    served = start_server(concurrency=1)
    client = OpenAI(base_url=f"{served.url}/v1", api_key=served.token, max_retries=0)
    train, valid = upload(client, tmp_path), upload(client, tmp_path, rows=4)
    job = create(client, tiny_model_dir, train.id, validation_file=valid.id)
    waiting = create(client, tiny_model_dir, train.id)
    assert client.fine_tuning.jobs.cancel(waiting.id).trained_tokens is None  # never ran
    done = wait_status(client, job.id, "succeeded")

    metrics = served.data_dir / "jobs" / job.id / "metrics.jsonl"
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    expected = sum(m.get("train/tokens_trained", 0) for m in lines)
    assert done.trained_tokens == expected > 0
    (file_id,) = done.result_files
    file = client.files.retrieve(file_id)
    assert file.purpose == "fine-tune-results" and file.filename == "step_metrics.csv"
    rows = list(csv.DictReader(io.StringIO(client.files.content(file_id).text)))
    header = list(rows[0])
    assert header[:5] == ["step", "train_loss", "train_mean_reward", "full_valid_mean_reward",
                          "tokens_trained"]  # fmt: skip
    assert "policy/entropy" in header and "loss/total" not in header
    assert [int(r["step"]) for r in rows] == [m["step"] for m in lines]
    assert sum(int(r["tokens_trained"] or 0) for r in rows) == expected
    # Registered once: reads again (one by one, listed) give the same file.
    assert client.fine_tuning.jobs.retrieve(job.id).result_files == [file_id]
    listed = {j.id: j for j in client.fine_tuning.jobs.list()}
    assert listed[job.id].result_files == [file_id] and listed[waiting.id].result_files == []
    assert [f.id for f in client.files.list()].count(file_id) == 1


def test_steps_merge_and_resumed_steps_replace():
    records = [
        {"step": 0, "val/reward/mean": 0.1},
        {"step": 1, "loss/total": 2.0, "train/tokens_trained": 10, "reward/mean": 0.2},
        {"step": 2, "loss/total": 1.0, "train/tokens_trained": 10},
        {"step": 2, "loss/total": 1.5, "train/tokens_trained": 12},  # rewritten after a resume
        {"step": 2, "val/reward/mean": 0.4},
    ]
    steps = step_records(records)
    assert [s["step"] for s in steps] == [0, 1, 2] and trained_tokens(steps) == 22
    assert trained_tokens(step_records(records[:1])) is None
    assert metrics_csv(steps).splitlines() == [
        "step,train_loss,train_mean_reward,full_valid_mean_reward,tokens_trained",
        "0,,,0.1,",
        "1,2.0,0.2,,10",
        "2,1.5,,0.4,12",
    ]


USAGE_LINES = [
    {"step": 1, "loss/total": 0.5, "usage/prompt_tokens": 100, "usage/sampled_tokens": 40,
     "usage/trained_tokens": 140, "usage/graded_samples": 4, "usage/tool_calls": 1},
    {"step": 2, "loss/total": 0.25, "usage/prompt_tokens": 100, "usage/sampled_tokens": 60,
     "usage/trained_tokens": 160, "usage/graded_samples": 4, "usage/tool_calls": 2,
     "usage/judge_prompt_tokens": 30, "usage/judge_completion_tokens": 5},
    {"step": 2, "val/reward/mean": 0.5},  # a validation line: no usage of its own
]  # fmt: skip


def test_usage_on_the_job_and_its_checkpoints(idle_server, tmp_path, tiny_model_dir):
    """What a job used is `openrft_usage`, which the openai client keeps in model_extra; the
    job object's own fields parse as before."""
    client = OpenAI(base_url=f"{idle_server.url}/v1", api_key=idle_server.token, max_retries=0)
    job = create(client, tiny_model_dir, upload(client, tmp_path).id)
    assert client.fine_tuning.jobs.retrieve(job.id).model_extra["openrft_usage"] == {}
    run_dir = idle_server.data_dir / "jobs" / job.id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in USAGE_LINES))
    (run_dir / "checkpoints" / "step-1").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-1" / "state.json").write_text("{}")

    got = client.fine_tuning.jobs.retrieve(job.id)
    assert got.model_extra["openrft_usage"] == {
        "prompt_tokens": 200, "sampled_tokens": 100, "trained_tokens": 300,
        "graded_samples": 8, "tool_calls": 3, "judge_prompt_tokens": 30,
        "judge_completion_tokens": 5,
    }  # fmt: skip
    assert got.status == "queued" and got.trained_tokens is None  # null until it has ended
    (checkpoint,) = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoint.step_number == 1 and checkpoint.metrics.train_loss == 0.5
    assert checkpoint.metrics.model_extra["openrft_usage"] == {
        "prompt_tokens": 100, "sampled_tokens": 40, "trained_tokens": 140,
        "graded_samples": 4, "tool_calls": 1,
    }  # up to the checkpoint's step  # fmt: skip
