"""Reading run directories: incremental metrics, rollouts by step, checkpoints, safe paths,
statusDetails from status.json, failure messages."""

from __future__ import annotations

import json

import pytest

from openrft.jobs import runfiles
from openrft.jobs.model import NOT_STARTED, JobError, JobNotFound
from openrft.jobs.workers import failure_message
from openrft.train.status import write_status


def append(path, *records):
    with path.open("a") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def test_metrics_tail_reads_new_lines_and_rereads_a_truncated_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = runfiles.MetricsTail(path)
    assert tail.read_new() == []
    append(path, {"step": 0}, {"step": 1})
    with path.open("a") as f:
        f.write('{"step": 2')  # half written: waits for its newline
    assert [r["step"] for r in tail.read_new()] == [0, 1]
    with path.open("a") as f:
        f.write("}\n")
    assert [r["step"] for r in tail.read_new()] == [2]
    path.write_text(json.dumps({"step": 0}) + "\n")  # a resume dropped lines
    assert [r["step"] for r in tail.read_new()] == [0]
    assert [r["step"] for r in runfiles.read_metrics(tmp_path, after=-1)] == [0]


def test_latest_keeps_the_last_value_of_each_metric():
    latest = runfiles.update_latest({}, [{"reward/mean": 1, "val/reward/mean": 0.5}])
    latest = runfiles.update_latest(latest, [{"reward/mean": 2, "time/step_s": 3}])
    assert latest == {"reward/mean": 2, "val/reward/mean": 0.5}


def test_rollouts_by_step_and_checkpoints(tmp_path):
    append(tmp_path / "rollouts.jsonl", {"step": 1, "id": "a"}, {"step": 2, "id": "b"})
    append(tmp_path / "rollouts.jsonl", {"example_id": "c", "step": 2})
    assert runfiles.rollout_steps(tmp_path) == [1, 2]
    assert [r.get("id") for r in runfiles.rollouts_for_step(tmp_path, 2)] == ["b", None]
    append(tmp_path / "metrics.jsonl", {"step": 10, "reward/mean": 0.3})
    for step in (2, 10):
        (tmp_path / "checkpoints" / f"step-{step}").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"step-{step}" / "state.json").write_text("{}")
    (tmp_path / "checkpoints" / "step-11.tmp").mkdir()  # being written: not listed
    found = runfiles.list_checkpoints(tmp_path)
    assert [c["step"] for c in found] == [2, 10]
    assert found[1]["metrics"] == {"step": 10, "reward/mean": 0.3}


@pytest.mark.parametrize("bad", ["../token", "a/../../x", "/etc/passwd", ""])
def test_safe_path_refuses_escapes(tmp_path, bad):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(JobError) as caught:
        runfiles.safe_path(run_dir, bad)
    assert caught.value.status == 400


def test_safe_path_refuses_links_out_and_finds_files(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "sub").mkdir(parents=True)
    (tmp_path / "secret").write_text("x")
    (run_dir / "link").symlink_to(tmp_path / "secret")
    (run_dir / "sub" / "report.md").write_text("# report")
    with pytest.raises(JobError, match="leaves"):
        runfiles.safe_path(run_dir, "link")
    with pytest.raises(JobNotFound):
        runfiles.safe_path(run_dir, "nope.md")
    assert runfiles.safe_path(run_dir, "sub/report.md").read_text() == "# report"


def test_status_details_follow_the_stages():
    details = runfiles.status_details("loading", NOT_STARTED, stopping=False)
    assert details == {"validation": "NotStarted", "dataProcessing": "InProgress",
                       "training": "NotStarted"}  # fmt: skip
    details = runfiles.status_details("training", details, stopping=True)
    assert details == {"validation": "Completed", "dataProcessing": "Completed",
                       "training": "Stopping"}  # fmt: skip
    assert runfiles.ended_details(details, "Stopped")["training"] == "Stopped"
    assert runfiles.ended_details(NOT_STARTED, "Failed")["dataProcessing"] == "Failed"
    validating = runfiles.status_details("validation", NOT_STARTED, stopping=False)
    assert runfiles.ended_details(validating, "Failed") == {
        "validation": "Failed", "dataProcessing": "Completed", "training": "NotStarted"
    }  # fmt: skip


def test_failure_message_prefers_status_json_then_the_log(tmp_path):
    (tmp_path / "worker.log").write_text("loading\rLoading 50%\rLoading 100%\nTraceback\nBoom\n")
    message = failure_message(1, tmp_path)
    assert message.startswith("the worker exited with code 1") and message.endswith("Boom")
    assert "Loading 100%" in message
    assert "killed by SIGKILL" in failure_message(-9, tmp_path)
    write_status(tmp_path, "failed", message="DatasetError: x.jsonl:3: messages: bad")
    assert failure_message(1, tmp_path) == "DatasetError: x.jsonl:3: messages: bad"


def test_cached_reads_follow_appends_replacements_and_rewrites(tmp_path):
    metrics, rollouts = tmp_path / "metrics.jsonl", tmp_path / "rollouts.jsonl"
    assert runfiles.read_metrics(tmp_path) == [] and runfiles.rollout_steps(tmp_path) == []
    append(metrics, {"step": 0}, {"step": 1})
    append(rollouts, {"step": 1, "id": "a"}, {"step": 1, "id": "b"})
    with rollouts.open("a") as f:
        f.write('{"step": 2, "id": "c"')  # half written: not indexed yet
    assert [r["step"] for r in runfiles.read_metrics(tmp_path, after=0)] == [1]
    assert runfiles.rollout_steps(tmp_path) == [1]
    with rollouts.open("a") as f:
        f.write("}\n")
    append(rollouts, {"step": 2, "id": "d"})
    assert [r["id"] for r in runfiles.rollouts_for_step(tmp_path, 2)] == ["c", "d"]
    append(metrics, {"step": 2})
    assert [r["step"] for r in runfiles.read_metrics(tmp_path, after=0)] == [1, 2]
    # a resume replaces the file (os.replace): read again from the start
    replaced = tmp_path / "new.jsonl"
    append(replaced, {"step": 0}, {"step": 1, "resumed": True})
    replaced.replace(metrics)
    assert [r.get("resumed") for r in runfiles.read_metrics(tmp_path)] == [None, True]
    # rewritten in place, longer than before: the changed bytes before the offset show it
    metrics.write_text("".join(json.dumps({"step": s, "x": "rewritten"}) + "\n" for s in range(4)))
    assert [r["step"] for r in runfiles.read_metrics(tmp_path, after=1)] == [2, 3]
    assert {r["x"] for r in runfiles.read_metrics(tmp_path)} == {"rewritten"}
    rollouts.unlink()  # a deleted run directory
    assert runfiles.rollout_steps(tmp_path) == [] and runfiles.rollouts_for_step(tmp_path, 1) == []


def test_cached_metrics_out_of_order_are_filtered(tmp_path):
    append(tmp_path / "metrics.jsonl", {"step": 3}, {"step": 1}, {"step": 5}, {"epoch": 1})
    assert [r.get("step") for r in runfiles.read_metrics(tmp_path, after=2)] == [3, 5]


def test_cached_usage_totals_follow_the_file(tmp_path):
    """The job API's usage comes from the cache, kept line by line: equal to summing the
    file, a step rewritten by a resumed run counted once (its last line), a replaced file
    counted afresh."""
    from openrft.metrics.usage import usage_totals

    path = tmp_path / "metrics.jsonl"

    def line(step, tokens):
        return json.dumps({"step": step, "usage/sampled_tokens": tokens, "usage/tool_calls": 1})

    path.write_text("".join(line(s, 10 * s) + "\n" for s in (1, 2, 3)) + '{"step": 0}\n')
    assert runfiles.read_usage(tmp_path) == {"sampled_tokens": 60, "tool_calls": 3}
    with path.open("a") as f:
        f.write(line(3, 5) + "\n" + line(4, 7) + "\n")  # step 3 again, after a resume
    records = runfiles.read_metrics(tmp_path)
    assert runfiles.read_usage(tmp_path) == usage_totals(records)
    assert runfiles.read_usage(tmp_path) == {"sampled_tokens": 42, "tool_calls": 4}
    replacement = tmp_path / "new.jsonl"
    replacement.write_text(line(1, 100) + "\n")
    replacement.replace(path)
    assert runfiles.read_usage(tmp_path) == {"sampled_tokens": 100, "tool_calls": 1}
