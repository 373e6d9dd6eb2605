"""Batching of concurrent chat requests: one generation runs at a time, and the requests that
wait while it runs join the next one when they sample alike.

Requests share a batch when their sampling parameters are equal (n, temperature, top_p, top_k,
max tokens, stop strings) and none of them set a seed: a seeded request runs alone so that the
same seed gives the same reply whatever else is in flight. The batch's prompts are decoded
together by the rollout engine (one padded forward per token for all of them), which on a CPU
costs little more than one request, so throughput grows with the number of waiting clients.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from openrft.types import Completion, SamplingParams

Generate = Callable[[Sequence[Sequence[int]], SamplingParams], list[list[Completion]]]


@dataclass(frozen=True)
class BatchResult:
    """What one request got back from the batch it ran in."""

    completions: list[Completion]
    batch_id: int  # counts the batches this server ran, from 1
    batch_size: int  # requests in that batch
    queue_s: float  # waiting before the batch started
    generate_s: float  # the batch's generation time


@dataclass
class _Pending:
    prompt: Sequence[int]
    params: SamplingParams
    seeded: bool
    future: asyncio.Future[BatchResult]
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> SamplingParams:
        return replace(self.params, seed=0)


class Batcher:
    """Queues requests and runs them batch by batch through `generate` in a worker thread."""

    def __init__(self, generate: Generate, max_prompts: int = 16):
        self.generate = generate
        self.max_prompts = max_prompts  # prompts in one batch at most
        self.batches_run = 0
        self._pending: list[_Pending] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(
        self, prompt: Sequence[int], params: SamplingParams, seeded: bool
    ) -> BatchResult:
        """The completions for `prompt`, once a batch that holds it has run."""
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(prompt, params, seeded, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    def take_batch(self) -> list[_Pending]:
        """The oldest request and the waiting ones that may run with it, in arrival order."""
        first = self._pending.pop(0)
        batch = [first]
        if not first.seeded:
            for waiting in list(self._pending):
                if len(batch) >= self.max_prompts:
                    break
                if not waiting.seeded and waiting.key == first.key:
                    batch.append(waiting)
                    self._pending.remove(waiting)
        return batch

    async def _drain(self) -> None:
        while self._pending:
            batch = [p for p in self.take_batch() if not p.future.done()]  # drop cancelled ones
            if not batch:
                continue
            self.batches_run += 1
            batch_id, started = self.batches_run, time.monotonic()
            try:
                prompts = [p.prompt for p in batch]
                results = await asyncio.to_thread(self.generate, prompts, batch[0].params)
            except Exception as exc:  # every request of the batch gets the failure
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            generate_s = time.monotonic() - started
            for pending, completions in zip(batch, results, strict=True):
                if not pending.future.done():
                    queue_s = started - pending.enqueued
                    result = BatchResult(completions, batch_id, len(batch), queue_s, generate_s)
                    pending.future.set_result(result)
