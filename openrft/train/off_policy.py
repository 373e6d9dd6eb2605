"""Where a step's rollouts come from: sampled when the step asks (synchronous, the default),
or sampled ahead in a background thread by weights up to `rollout.max_off_policy_steps`
updates old, so that generation (and grading) of the next steps runs while this one trains.

With k = max_off_policy_steps > 0 the batch of step s may be generated once the trainer has
synced the weights of update s - 1 - k: every group then carries the policy version that
sampled it, at most k behind the trainer's when it is trained on. A group further behind
(which the schedule above never produces, but an engine could) is left out of the update and
counted (`off_policy/dropped_groups`). The update corrects for the lag by importance weights
against the sampler's log-probs (`algo.sampler_correction`), which the engine reports.

The engine is used by one thread at a time: the producer holds `engine_lock` while it samples
a batch, and the trainer takes it to sync weights or validate. On resume nothing sampled ahead
survives the restart: the first step after a checkpoint is sampled by the checkpoint's weights
and its prompts are the ones after the last trained step, so no prompt is skipped and none is
trained on twice.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType

from openrft.metrics import names
from openrft.train.rollouts import RolloutBatch

# Samples step `step`'s batch, its prompts from `prompts_seen` on in the data stream.
SampleStep = Callable[[int, int], RolloutBatch]


class RolloutSource:
    """The batches of steps first_step .. last_step, in order (use as a context manager)."""

    def __init__(
        self,
        sample: SampleStep,
        first_step: int,
        last_step: int,
        prompts_seen: int,
        max_lag: int = 0,
    ):
        self.sample, self.max_lag = sample, max_lag
        self.prompts_seen = prompts_seen  # the producer's position in the data stream
        self.engine_lock = threading.Lock()
        self.ready = threading.Condition()
        self.batches: dict[int, RolloutBatch] = {}
        self.synced = first_step - 1  # the trainer's latest synced update
        self.next_step, self.last_step = first_step, last_step
        self.failure: BaseException | None = None
        self.closing = False
        self.thread: threading.Thread | None = None
        if max_lag > 0:
            self.thread = threading.Thread(target=self._produce, name="rollouts-ahead", daemon=True)
            self.thread.start()

    def __enter__(self) -> RolloutSource:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def take(self, step: int) -> tuple[RolloutBatch, dict[str, float]]:
        """Step `step`'s batch (groups too far behind left out) and its off-policy metrics."""
        if self.thread is None:
            with self.engine_lock:
                batch = self.sample(step, self.prompts_seen)
            self.prompts_seen += batch.prompts_used
            return batch, {}
        started = time.monotonic()
        with self.ready:
            while step not in self.batches and self.failure is None:
                self.ready.wait()
            if self.failure is not None:
                raise self.failure
            batch = self.batches.pop(step)
        batch, metrics = self._within_lag(step, batch)
        return batch, metrics | {names.OFF_POLICY_WAIT_S: time.monotonic() - started}

    def _within_lag(self, step: int, batch: RolloutBatch) -> tuple[RolloutBatch, dict[str, float]]:
        lags = {i: step - 1 - batch.sampled[i].policy_version for i in batch.trained}
        kept = tuple(i for i in batch.trained if lags[i] <= self.max_lag)
        trained_lags = [lags[i] for i in kept] or [0]
        metrics = {
            names.OFF_POLICY_LAG_MEAN: statistics.fmean(trained_lags),
            names.OFF_POLICY_LAG_MAX: max(trained_lags),
            names.OFF_POLICY_DROPPED: len(batch.trained) - len(kept),
        }
        return replace(batch, trained=kept), metrics

    def synced_update(self, step: int) -> None:
        """The trainer synced the engine to update `step`: sampling may move on."""
        with self.ready:
            self.synced = step
            self.ready.notify_all()

    def _produce(self) -> None:
        try:
            while self.next_step <= self.last_step:
                step = self.next_step
                with self.ready:  # step s waits for the weights of update s - 1 - k
                    while self.synced < step - 1 - self.max_lag and not self.closing:
                        self.ready.wait()
                    if self.closing:
                        return
                with self.engine_lock:
                    batch = self.sample(step, self.prompts_seen)
                self.prompts_seen += batch.prompts_used
                with self.ready:
                    self.batches[step] = batch
                    self.next_step += 1
                    self.ready.notify_all()
        except BaseException as exc:  # handed to the trainer at its next take()
            with self.ready:
                self.failure = exc
                self.ready.notify_all()

    def close(self) -> None:
        """Stop sampling ahead; wait for a batch being sampled (the engine is released)."""
        with self.ready:
            self.closing = True
            self.ready.notify_all()
        if self.thread is not None:
            self.thread.join()
