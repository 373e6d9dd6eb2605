"""The job's workers on a Ray cluster (`cluster.backend = "ray"`): rollout engines and
graders as Ray actors, the trainer in the driver.

- `RayGraderPool` is a Grader: each call goes to an idle grader actor (`cluster.
  reward_workers` of them, each with the job's grader built in its own process). Calls run
  at once, so the grading pipeline (openrft.train.pipeline) grades that many groups beside
  the generation whatever the grader is: a hung call is stopped by killing its actor.
- `RayRolloutPool` is a RolloutEngine: `cluster.rollout_workers` actors, each holding its own
  copy of the model and an in-process engine (openrft.rollout.hf_engine). A step's prompts go
  out in chunks of `rollout.batch_size` samples, chunk c seeded with the step's seed + c (the
  samples do not depend on the number of workers), and each group is handed on as its chunk
  returns. After each update the trainable weights (the LoRA adapter, or every weight) go to
  the actors through the object store, and each actor checks them with the weight-sync probe
  against the trainer's own log-probs: an actor that did not take the update stops the job
  with WeightSyncError.

Faults: Ray restarts an actor that dies (killed, out of memory) up to `cluster.
max_worker_restarts` times; its chunk is sent again (after the latest weights) and its
grading call retried once, else its samples are `worker_died` failures. A call running past
`cluster.worker_timeout_s` (a grader: `reward.batch_timeout_s` when that is shorter) kills
and restarts its actor: nothing waits on a dead or hung actor.

Ray is optional (`pip install -e '.[ray]'`); nothing here imports it before a job asks.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from openrft.config import ClusterConfig, JobConfig, config_from_dict, config_to_dict
from openrft.errors import ConfigError, RolloutError, WeightSyncError
from openrft.metrics import names
from openrft.rewards import build_grader, grade_safely
from openrft.rewards.grader import with_batch_timeout
from openrft.rollout.engine import OnGroup
from openrft.rollout.hf_engine import HFEngine
from openrft.train.forward import sequence_logprobs
from openrft.train.policy import Policy, build_policy, set_threads
from openrft.types import Completion, Grade, Sample, SamplingParams

CHUNK_SEED_STRIDE = 7_919  # chunk c of a step samples with the step's seed + stride x c
RAY_TEMP = os.environ.get("OPENRFT_RAY_TMP", "/tmp/openrft-ray")  # a local Ray's sessions
SYNC_TOLERANCE = 1e-4  # largest |log-prob| gap of an actor's model from the trainer's (nats)


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "cluster.backend", "'ray' needs Ray installed: pip install -e '.[ray]'"
        ) from exc
    return ray


def connect(cluster: ClusterConfig) -> tuple[Any, bool]:
    """Ray, connected to `cluster.address` ("auto" or host:port), or to a local Ray started
    here when the address is empty; and whether this call started it (then the job stops it).
    A process already connected (a test's cluster) keeps its connection."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    if cluster.address:
        ray.init(address=cluster.address, log_to_driver=False)
        return ray, False
    ray.init(include_dashboard=False, log_to_driver=False, _temp_dir=RAY_TEMP)
    return ray, True


def wait_restarted(ray: Any, actor: Any, timeout_s: float) -> int:
    """Wait for Ray to bring a dead actor back (its constructor runs again): its process id.
    Raises Ray's ActorDiedError when it will not (no restarts left), GetTimeoutError past
    `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(actor.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
        except ray.exceptions.ActorUnavailableError:  # restarting: not yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def alive(ray: Any, actor: Any) -> bool:
    try:
        ray.get(actor.ready.remote(), timeout=60)
    except Exception:  # noqa: BLE001 - any failure to answer is "not alive"
        return False
    return True


class GraderActor:
    """One grader in its own process (a Ray actor)."""

    def __init__(self, spec: Any, timeout_s: float, batch_timeout_s: float, cwd: str):
        if Path(cwd).is_dir():  # the driver's directory: relative grader paths resolve alike
            os.chdir(cwd)
        self.grader = with_batch_timeout(build_grader(spec, timeout_s), batch_timeout_s)

    def ready(self) -> int:
        return os.getpid()

    def grade(self, samples: list[Sample]) -> list[Grade]:
        return grade_safely(self.grader, samples)


class RayGraderPool:
    """A Grader whose calls run in grader actors, one call per idle actor."""

    thread_safe = True  # each call has an actor of its own

    def __init__(self, config: JobConfig, ray: Any):
        cluster, reward = config.cluster, config.reward
        self.ray = ray
        self.name = reward.grader if isinstance(reward.grader, str) else "grader"
        batch_limit = reward.batch_timeout_s or cluster.worker_timeout_s  # 0: no batch limit
        self.timeout_s = min(cluster.worker_timeout_s, batch_limit)
        self.restart_timeout_s = cluster.worker_timeout_s  # a restart builds the grader again
        remote = ray.remote(GraderActor).options(
            num_cpus=0, max_restarts=cluster.max_worker_restarts, scheduling_strategy="SPREAD"
        )
        self.actors = [
            remote.remote(reward.grader, reward.timeout_s, reward.batch_timeout_s, os.getcwd())
            for _ in range(cluster.reward_workers)
        ]
        ray.get([actor.ready.remote() for actor in self.actors])  # a bad grader fails here
        self.idle: queue.Queue[Any] = queue.Queue()
        for actor in self.actors:
            self.idle.put(actor)
        self.restarts = 0
        self.lock = threading.Lock()

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        actor = self.idle.get()
        try:
            return self._call(actor, list(samples))
        finally:
            self.idle.put(actor)

    def _call(self, actor: Any, samples: list[Sample]) -> list[Grade]:
        """The actor's grades; a timeout kills (and so restarts) the actor; a dead actor's
        batch is sent once more to it restarted, then its samples are worker_died."""
        ray = self.ray
        started = time.perf_counter()

        def failed(kind: str, message: str) -> list[Grade]:
            latency = (time.perf_counter() - started) / len(samples)
            return [Grade.failed(kind, message[:500], latency) for _ in samples]

        for attempt in range(2):
            try:
                return ray.get(actor.grade.remote(samples), timeout=self.timeout_s)
            except ray.exceptions.GetTimeoutError:
                ray.kill(actor, no_restart=False)  # stops the work: the process is killed
                self._restarted()
                # Back in the pool only once restarted (its grader built again), so the next
                # call's deadline counts grading, not the restart.
                gone = (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError)
                with contextlib.suppress(*gone):  # a later call reports a dead actor itself
                    wait_restarted(ray, actor, self.restart_timeout_s)
                return failed(
                    "timeout",
                    f"grader {self.name!r} did not finish a batch of {len(samples)} within "
                    f"{self.timeout_s:g} s; its worker was killed and restarted",
                )
            except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as exc:
                self._restarted()
                died = f"grader {self.name!r}: its worker died on this batch"
                if attempt == 1:
                    return failed("worker_died", f"{died} twice: {exc}")
                try:
                    wait_restarted(ray, actor, self.restart_timeout_s)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as gone:
                    return failed("worker_died", f"{died} and did not come back: {gone}")
        raise AssertionError("unreachable: the second attempt returns")

    def _restarted(self) -> None:
        with self.lock:
            self.restarts += 1

    def alive(self) -> int:
        return sum(alive(self.ray, actor) for actor in self.actors)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)


def cluster_metrics(engine: object, grader: object) -> dict[str, float]:
    """Workers alive at the end of a step, restarts so far, the weight sync's time."""
    metrics: dict[str, float] = {}
    restarts = 0
    if isinstance(engine, RayRolloutPool):
        metrics |= engine.metrics()
        restarts += engine.restarts
    if isinstance(grader, RayGraderPool):
        metrics[names.CLUSTER_REWARD_WORKERS] = grader.alive()
        restarts += grader.restarts
    if metrics:
        metrics[names.CLUSTER_RESTARTS] = restarts
    return metrics


class RolloutActor:
    """A rollout engine with its own copy of the policy (a Ray actor)."""

    def __init__(self, config: dict, probe_ids: list[int], cwd: str):
        if Path(cwd).is_dir():
            os.chdir(cwd)
        job = config_from_dict(config)
        set_threads(max(1, int(job.cluster.worker_cpus)))
        self.policy = build_policy(job)
        rollout = job.rollout
        self.engine = HFEngine(
            self.policy.model,
            self.policy.tokenizer,
            rollout.batch_size,
            torch.bfloat16 if rollout.dtype == "bfloat16" else None,
            rollout.decoder,
            fast_paths=job.train.fast_paths == "auto",
            probe_ids=probe_ids,
            trainer_logprobs=sequence_logprobs,
            probe_tolerance=rollout.probe_tolerance,
        )
        self.probe_ids = probe_ids

    def ready(self) -> int:
        return os.getpid()

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def describe(self) -> str:
        return self.engine.description

    def sync(
        self, weights: dict[str, torch.Tensor], version: int, trainer: torch.Tensor
    ) -> dict[str, float]:
        """Load the trainer's weights; check this copy computes the trainer's log-probs on
        the probe (the weights arrived whole), then refresh the engine (its own probe)."""
        model = self.policy.model
        missing = set(weights) - {name for name, _ in model.named_parameters()}
        if missing:
            raise WeightSyncError(f"rollout worker has no parameters {sorted(missing)[:3]}")
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in weights:
                    parameter.copy_(weights[name])
        gap = float((sequence_logprobs(model, self.probe_ids) - trainer).abs().max())
        if not gap <= SYNC_TOLERANCE:
            raise WeightSyncError(
                f"rollout worker {os.getpid()}: after sync {version} its model is {gap:.3g} "
                f"nats from the trainer's on the probe (at most {SYNC_TOLERANCE:g})"
            )
        return self.engine.sync_weights(model, version)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        return self.engine.generate(prompts, params)


def trainable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """What an update changes: the LoRA adapter, or every weight of a full fine-tune."""
    return {
        name: parameter.detach().to("cpu", copy=True)
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }


class RayRolloutPool:
    """A RolloutEngine whose samples come from rollout actors."""

    def __init__(self, config: JobConfig, policy: Policy, probe_ids: list[int], ray: Any):
        cluster = config.cluster
        self.ray, self.cluster, self.probe_ids = ray, cluster, list(probe_ids)
        self.chunk_prompts = max(1, config.rollout.batch_size // config.rollout.samples_per_prompt)
        remote = ray.remote(RolloutActor).options(
            num_cpus=cluster.worker_cpus,
            num_gpus=cluster.worker_gpus,
            max_restarts=cluster.max_worker_restarts,
            scheduling_strategy="SPREAD",
        )
        settings = config_to_dict(config)
        self.actors = [
            remote.remote(settings, self.probe_ids, os.getcwd())
            for _ in range(cluster.rollout_workers)
        ]
        ray.get([actor.ready.remote() for actor in self.actors])  # a model that fails, fails here
        engines = ray.get(self.actors[0].describe.remote())
        self.description = f"{len(self.actors)} Ray rollout workers ({engines})"
        self.policy_version = 0
        self.weights: tuple[Any, int, torch.Tensor] | None = None  # the latest sync's
        self.restarts = 0
        self.sync_s = 0.0

    def sync_weights(self, policy: nn.Module, version: int) -> dict[str, float]:
        started = time.monotonic()
        trainer = sequence_logprobs(policy, self.probe_ids)
        self.weights = (self.ray.put(trainable_weights(policy)), version, trainer)
        metrics = self.ray.get([self._sync(actor) for actor in self.actors])
        self.policy_version = version
        self.sync_s = time.monotonic() - started
        # Each worker's probe metrics; the step logs the worst worker's.
        return {key: max(m[key] for m in metrics) for key in metrics[0]}

    def _sync(self, actor: Any) -> Any:
        assert self.weights is not None
        reference, version, trainer = self.weights
        return actor.sync.remote(reference, version, trainer)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        on_group: OnGroup | None = None,
    ) -> list[list[Completion]]:
        ray = self.ray
        starts = list(range(0, len(prompts), self.chunk_prompts))
        results: list[list[list[Completion]] | None] = [None] * len(starts)
        pending: dict[Any, tuple[int, int]] = {}  # task -> (chunk, actor index)
        attempts = [0] * len(starts)

        def send(chunk: int, worker: int) -> None:
            start = starts[chunk]
            batch = [list(p) for p in prompts[start : start + self.chunk_prompts]]
            seeded = replace(params, seed=params.seed + CHUNK_SEED_STRIDE * chunk)
            pending[self.actors[worker].generate.remote(batch, seeded)] = (chunk, worker)

        for chunk in range(len(starts)):
            send(chunk, chunk % len(self.actors))
        deadline = time.monotonic() + self.cluster.worker_timeout_s
        while pending:
            ready, _ = ray.wait(
                list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic())
            )
            if not ready:  # past the deadline: the slowest workers are restarted, their work redone
                for task, (chunk, worker) in list(pending.items()):
                    ray.kill(self.actors[worker], no_restart=False)
                    self._retry(chunk, worker, attempts, pending, task, send, "timed out")
                deadline = time.monotonic() + self.cluster.worker_timeout_s
                continue
            task = ready[0]
            chunk, worker = pending[task]
            try:
                groups = ray.get(task)
            except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as exc:
                self._retry(chunk, worker, attempts, pending, task, send, f"died ({exc})")
                continue
            del pending[task]
            results[chunk] = groups
            if on_group is not None:
                for offset, group in enumerate(groups):
                    on_group(starts[chunk] + offset, group)
        return [group for chunk in results for group in chunk or []]

    def _retry(self, chunk, worker, attempts, pending, task, send, why: str) -> None:
        """Chunk `chunk`'s worker died or hung: once Ray has restarted it, give it the latest
        weights and the chunk again (the job fails after max_worker_restarts of them)."""
        del pending[task]
        attempts[chunk] += 1
        self.restarts += 1
        if attempts[chunk] > self.cluster.max_worker_restarts:
            raise RolloutError(
                f"rollout worker {worker} {why} on the same prompts {attempts[chunk]} times "
                f"(cluster.max_worker_restarts = {self.cluster.max_worker_restarts})"
            )
        actor = self.actors[worker]
        try:
            wait_restarted(self.ray, actor, self.cluster.worker_timeout_s)
            if self.weights is not None:
                self.ray.get(self._sync(actor), timeout=self.cluster.worker_timeout_s)
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.GetTimeoutError) as exc:
            message = f"rollout worker {worker} {why} and did not come back: {exc}"
            raise RolloutError(message) from exc
        send(chunk, worker)

    def alive(self) -> int:
        return sum(alive(self.ray, actor) for actor in self.actors)

    def metrics(self) -> dict[str, float]:
        return {names.CLUSTER_ROLLOUT_WORKERS: self.alive(), names.CLUSTER_SYNC_S: self.sync_s}

    def worker_pids(self) -> list[int]:
        return self.ray.get([actor.ready.remote() for actor in self.actors])

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
