"""Experiment trackers (`[tracking] backends`): TensorBoard, MLflow and Weights & Biases get
every step's numeric metrics, the resolved config and, at the end, the report's PNG plots.

    trackers = open_trackers(backends, run_dir, name, project, params, resume_step)
    trackers.log_metrics(step, record)        # per metrics.jsonl line
    trackers.log_images(pngs)                 # at finish
    trackers.close()

Each library is imported only when its backend is chosen; a missing one is a ConfigError
naming the extra to install. A tracker that raises mid-run is dropped with one warning
(`Trackers.disabled`), never failing the training job. Resume appends to the same run: the
MLflow and W&B run ids are kept in the run directory; TensorBoard appends to its log dir.
"""

from __future__ import annotations

import importlib.util
import math
import netrc
import os
import re
import sys
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from openrft.errors import ConfigError

# backend -> the module it imports (the optional extra has the backend's name)
MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
MLFLOW_RUN_ID = "mlflow_run_id"  # files in the run directory that let a resume append
WANDB_RUN_ID = "wandb_run_id"
MLFLOW_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit
MLFLOW_PARAM_CHARS = 6000  # MLflow's longest param value


class Tracker(Protocol):
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def log_images(self, paths: list[Path], step: int) -> None: ...
    def close(self) -> None: ...


def check_backends(backends: Iterable[str]) -> None:
    """Fail at job start, not mid-run, when a chosen backend's package is not installed."""
    for backend in backends:
        if importlib.util.find_spec(MODULES[backend]) is None:
            raise ConfigError(
                "tracking.backends",
                f"{backend!r} needs its package: pip install -e '.[{backend}]'",
            )


def numeric_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The record's finite numbers (strings, None, lists and NaN are not plottable)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, bool | int | float) and math.isfinite(value):
            out[key] = float(value)
    return out


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"seed": 0}} -> {"train.seed": 0}: trackers take flat hyperparameters."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class Trackers:
    """The open trackers; a call that raises drops that tracker with one warning."""

    def __init__(self, trackers: dict[str, Tracker]):
        self.trackers = trackers
        self.disabled: dict[str, str] = {}  # backend -> the error that disabled it
        self.last_step = 0

    def add(self, name: str, opener: Callable[[], Tracker]) -> None:
        try:
            self.trackers[name] = opener()
        except Exception as exc:  # a tracker's failure must never end the training job
            self._disable(name, exc)

    def log_metrics(self, step: int, record: dict[str, Any]) -> None:
        self.last_step = max(self.last_step, step)
        metrics = numeric_metrics(record)
        self._each(lambda tracker: tracker.log_metrics(step, metrics))

    def log_images(self, paths: list[Path]) -> None:
        if paths:
            self._each(lambda tracker: tracker.log_images(paths, self.last_step))

    def close(self) -> None:
        self._each(lambda tracker: tracker.close())
        self.trackers = {}

    def _each(self, call: Callable[[Tracker], object]) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                call(tracker)
            except Exception as exc:  # a tracker's failure must never end the training job
                del self.trackers[name]
                self._disable(name, exc)

    def _disable(self, name: str, exc: Exception) -> None:
        self.disabled[name] = f"{type(exc).__name__}: {exc}"
        print(f"openrft: warning: tracker {name} disabled: {exc}", file=sys.stderr)


def open_trackers(
    backends: Iterable[str],
    run_dir: Path,
    name: str,
    project: str,
    params: dict[str, Any],
    resume_step: int = 0,
) -> Trackers:
    """Open each chosen backend's run; resume_step > 0 (a run resumed from the checkpoint of
    that step) appends to the run saved in run_dir."""
    check_backends(backends)
    trackers, flat = Trackers({}), flatten(params)
    for backend in backends:
        # a tracker that cannot open (a server down) is dropped like one failing mid-run
        opener = partial(OPENERS[backend], run_dir, name, project, flat, resume_step)
        trackers.add(backend, opener)
    return trackers


class TensorBoardTracker:
    def __init__(
        self, run_dir: Path, name: str, project: str, params: dict[str, Any], resume_step: int
    ):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events a resumed run logs again (steps after its checkpoint)
        purge = resume_step + 1 if resume_step else None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)
        if not resume_step:
            table = "\n".join(f"| {k} | {v} |" for k, v in params.items())
            self.writer.add_text("config", "| field | value |\n|---|---|\n" + table, 0)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_images(self, paths: list[Path], step: int) -> None:
        import matplotlib.image

        for path in paths:
            image = matplotlib.image.imread(str(path))[..., :3]  # RGBA floats -> RGB
            self.writer.add_image(f"report/{path.stem}", image, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class MlflowTracker:
    def __init__(
        self, run_dir: Path, name: str, project: str, params: dict[str, Any], resume_step: int
    ):
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            # The default is a file store in the run dir: no server, no database. MLflow 3
            # refuses file stores unless this is set (it keeps them in maintenance mode).
            uri = (run_dir / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        id_file = run_dir / MLFLOW_RUN_ID
        if resume_step and id_file.exists():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(project)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(project)
        )
        self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
        id_file.write_text(self.run_id)
        self._log_params(params)

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(_mlflow_key(k), str(v)[:MLFLOW_PARAM_CHARS]) for k, v in params.items()]
        for start in range(0, len(items), MLFLOW_PARAMS_PER_BATCH):
            batch = items[start : start + MLFLOW_PARAMS_PER_BATCH]
            self.client.log_batch(self.run_id, params=batch)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(_mlflow_key(k), v, now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_images(self, paths: list[Path], step: int) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path="report")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbTracker:
    def __init__(
        self, run_dir: Path, name: str, project: str, params: dict[str, Any], resume_step: int
    ):
        import wandb

        id_file = run_dir / WANDB_RUN_ID
        run_id = id_file.read_text().strip() if resume_step and id_file.exists() else None
        mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_logged_in() else "offline")
        self.run = wandb.init(
            project=project,
            name=name,
            id=run_id,
            resume="allow" if run_id else None,
            dir=os.environ.get("WANDB_DIR") or str(run_dir),
            mode=mode,
            config=params,
            reinit="create_new",
            # W&B would otherwise wrap stdout/stderr, under the job's own progress and logs
            settings=wandb.Settings(console="off"),
        )
        id_file.write_text(self.run.id)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def log_images(self, paths: list[Path], step: int) -> None:
        import wandb

        self.run.log({f"report/{p.stem}": wandb.Image(str(p)) for p in paths}, step=step)

    def close(self) -> None:
        self.run.finish()


OPENERS = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "wandb": WandbTracker}


def _wandb_logged_in() -> bool:
    """Online only for a user who has logged in (WANDB_API_KEY, or `wandb login`'s netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _mlflow_key(key: str) -> str:
    """MLflow allows letters, digits and _-. /; anything else becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key)
