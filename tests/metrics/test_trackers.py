"""[tracking] backends: a tiny job logs to TensorBoard, MLflow and W&B (offline), and each run
is read back with the library's own reader."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from openrft.errors import ConfigError
from openrft.metrics import trackers
from openrft.train.loop import train
from tests.train.helpers import tiny_job

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("wandb")

ALL = 'tracking.backends=["tensorboard", "mlflow", "wandb"]'


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path, monkeypatch):
    """No network: W&B offline, quiet, writing under tmp; MLflow to the run dir's file store."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "wandb").mkdir()


def metrics_by_step(run_dir: Path, key: str) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in lines if r.get(key) is not None}


def test_every_backend_gets_metrics_config_and_plots(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    config = tiny_job(tmp_path, tiny_model_dir, ALL, "train.max_steps=2")
    train(config, run_dir, show_progress=False)
    rewards = metrics_by_step(run_dir, "reward/mean")
    assert sorted(rewards) == [1, 2]
    assert "trackers_disabled" not in json.loads((run_dir / "summary.json").read_text())
    check_tensorboard(run_dir, rewards)
    check_mlflow(run_dir, rewards, str(tiny_model_dir))
    check_wandb(tmp_path / "wandb", rewards, str(tiny_model_dir))


def check_tensorboard(run_dir: Path, rewards: dict[int, float]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("reward/mean")}
    assert logged == pytest.approx(rewards)
    assert "report/reward" in events.Tags()["images"]


def check_mlflow(run_dir: Path, rewards: dict[int, float], model: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    run_id = (run_dir / trackers.MLFLOW_RUN_ID).read_text()
    history = client.get_metric_history(run_id, "reward/mean")
    assert {m.step: m.value for m in history} == pytest.approx(rewards)
    run = client.get_run(run_id)
    assert run.data.params["model.name"] == model
    assert run.info.status == "FINISHED"
    artifacts = {Path(a.path).name for a in client.list_artifacts(run_id, "report")}
    assert "reward.png" in artifacts


def check_wandb(wandb_dir: Path, rewards: dict[int, float], model: str) -> None:
    """The offline run's .wandb log, decoded with W&B's own Record protobuf (wandb 0.31 has no
    public Python reader of the file, so read_wandb_log undoes its LevelDB-style framing)."""
    from wandb.proto import wandb_internal_pb2

    (log,) = wandb_dir.glob("wandb/offline-run-*/run-*.wandb")
    history: dict[int, float] = {}
    config: dict[str, str] = {}
    images: set[str] = set()
    for data in read_wandb_log(log):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.HasField("history"):
            row = {item.key or "/".join(item.nested_key): item.value_json
                   for item in record.history.item}  # fmt: skip
            if "reward/mean" in row:
                history[json.loads(row["_step"])] = json.loads(row["reward/mean"])
            images |= {key for key in row if key.startswith("report/")}
        if record.HasField("run"):  # wandb.init's config travels in the run record
            config.update({item.key: item.value_json for item in record.run.config.update})
    assert history == pytest.approx(rewards)
    assert json.loads(config["model.name"]) == model
    assert "report/reward/_type" in images  # nested keys: an image's fields


def read_wandb_log(path: Path) -> list[bytes]:
    """Records of a .wandb file: a 7-byte header, then 32 KiB blocks of chunks, each a 7-byte
    header (crc32, little-endian length, type: 1 full, 2 first, 3 middle, 4 last)."""
    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    records, pending, offset = [], b"", 7
    while offset + 7 <= len(raw):
        left = 32768 - offset % 32768
        if left < 7:  # a block's tail too short for a chunk header is padding
            offset += left
            continue
        length, kind = struct.unpack("<HB", raw[offset + 4 : offset + 7])
        if length == 0 and kind == 0:
            break
        pending += raw[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):
            records.append(pending)
            pending = b""
    return records


def test_a_missing_package_is_a_config_error(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(trackers.MODULES, "mlflow", "openrft_no_such_module")
    config = tiny_job(tmp_path, tiny_model_dir, 'tracking.backends=["mlflow"]')
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[mlflow\]'"):
        train(config, tmp_path / "run", show_progress=False)


def test_a_failing_tracker_is_disabled_and_the_job_completes(
    tmp_path, tiny_model_dir, monkeypatch, capsys
):
    def broken(self, step, metrics):
        raise RuntimeError("tracking server went away")

    monkeypatch.setattr(trackers.TensorBoardTracker, "log_metrics", broken)
    run_dir = tmp_path / "run"
    config = tiny_job(tmp_path, tiny_model_dir, 'tracking.backends=["tensorboard"]')
    summary = train(config, run_dir, show_progress=False)
    assert summary.status == "completed"
    notes = json.loads((run_dir / "summary.json").read_text())["trackers_disabled"]
    assert "tracking server went away" in notes["tensorboard"]
    assert capsys.readouterr().err.count("tracker tensorboard disabled") == 1


class StopAfterFirstStep:
    def is_set(self) -> bool:
        return True  # the run stops after step 1 (with a checkpoint), to be resumed


def test_a_resumed_run_appends_to_the_same_tracker_runs(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    config = tiny_job(tmp_path, tiny_model_dir, ALL, "train.max_steps=2")
    first = train(config, run_dir, show_progress=False, stop=StopAfterFirstStep())
    assert first.status == "stopped"
    mlflow_id = (run_dir / trackers.MLFLOW_RUN_ID).read_text()
    wandb_id = (run_dir / trackers.WANDB_RUN_ID).read_text()
    train(config, run_dir, resume=True, show_progress=False)
    assert (run_dir / trackers.MLFLOW_RUN_ID).read_text() == mlflow_id
    assert (run_dir / trackers.WANDB_RUN_ID).read_text() == wandb_id
    rewards = metrics_by_step(run_dir, "reward/mean")
    assert sorted(rewards) == [1, 2]
    check_tensorboard(run_dir, rewards)
    check_mlflow(run_dir, rewards, str(tiny_model_dir))


def test_a_tracker_that_cannot_open_is_disabled_and_the_job_completes(
    tmp_path, tiny_model_dir, monkeypatch
):
    def unreachable(self, *args):
        raise ConnectionError("no tracking server at that address")

    monkeypatch.setattr(trackers.MlflowTracker, "__init__", unreachable)
    run_dir = tmp_path / "run"
    backends = 'tracking.backends=["mlflow", "tensorboard"]'
    summary = train(tiny_job(tmp_path, tiny_model_dir, backends), run_dir, show_progress=False)
    assert summary.status == "completed"
    notes = json.loads((run_dir / "summary.json").read_text())["trackers_disabled"]
    assert list(notes) == ["mlflow"]
    assert (run_dir / "tensorboard").is_dir()
