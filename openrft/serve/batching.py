"""Batching of concurrent chat requests: one generation runs at a time, and the requests that
wait while it runs join the next one when they sample alike.

Requests share a batch when their sampling parameters are equal (n, temperature, top_p, top_k,
max tokens, stop strings) and none of them set a seed: a seeded request runs alone so that the
same seed gives the same reply whatever else is in flight. A streamed request batches like any
other: its watch (openrft.serve.streaming) is handed to `generate` with the batch, and hears
its tokens as they are decoded. The batch's prompts are decoded
together by the rollout engine (one padded forward per token for all of them), which on a CPU
costs little more than one request, so throughput grows with the number of waiting clients.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from openrft.types import Completion, SamplingParams

# generate(prompts, params) -> each prompt's completions; called as generate(prompts, params,
# watches) when a request of the batch streams (watches[i]: prompt i's watch, or None).
Generate = Callable[..., list[list[Completion]]]


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
    watch: Any = None  # a streamed request's StreamWatch (openrft.serve.streaming)
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
        return await self.enqueue(prompt, params, seeded)

    def enqueue(
        self, prompt: Sequence[int], params: SamplingParams, seeded: bool, watch: Any = None
    ) -> asyncio.Future[BatchResult]:
        """Queues `prompt`; the future is set once its batch has run (cancelling it before
        then drops the request). `watch` hears its tokens while the batch runs."""
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(prompt, params, seeded, future, watch))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return future

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
                watches = [p.watch for p in batch]
                extra = (watches,) if any(w is not None for w in watches) else ()
                results = await asyncio.to_thread(self.generate, prompts, batch[0].params, *extra)
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
