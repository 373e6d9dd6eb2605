"""The serving core every API of `openrft serve` translates to and from: a chat request in
Chat Completions form, checked, rendered, queued for a batch, and its reply shaped and logged.

OpenAI's chat endpoint (openrft.serve.app) hands it request bodies as they come; the Bedrock
Runtime endpoints (openrft.serve.bedrock_runtime) translate theirs first, so their calls are
logged in chat-completions form and `openrft data from-logs` reads them like any other.
`stream` serves a streamed request: its text as it is decoded (openrft.serve.streaming).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from openrft.rollout.openai_chat import (
    ChatRequest,
    RequestError,
    completion_body,
    parse_request,
    request_metadata,
)
from openrft.serve.batching import Batcher, BatchResult
from openrft.serve.invocations import InvocationLog
from openrft.serve.streaming import StreamWatch, TextDelta
from openrft.types import Completion

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # app.py builds the service; importing it here would be circular
    from openrft.serve.app import ChatModel


@dataclass(frozen=True)
class Answer:
    """A served request: what was asked, what was generated and the chat.completion body."""

    request: ChatRequest
    prompt_tokens: int
    completions: list[Completion]
    reply: dict[str, Any]  # OpenAI's chat.completion, choices in the completions' order


@dataclass(frozen=True)
class Stream:
    """A streamed request under way: `events` yields TextDelta items as the text is decoded
    and the Answer last. With `incremental`, each choice's deltas join to its message content
    (the rest of it comes as deltas just before the Answer); without (tools are shown, so the
    text may be tool calls), there are no deltas, only the Answer. Its reply's id and created
    time are `id` and `created`, known before it is."""

    request: ChatRequest
    id: str
    created: int
    incremental: bool
    events: AsyncIterator[TextDelta | Answer]


class ChatService:
    """Serves chat requests one batch at a time through `batcher`, logging each to `log`."""

    def __init__(self, chat: ChatModel, batcher: Batcher, log: InvocationLog | None):
        self.chat, self.batcher, self.log = chat, batcher, log

    async def answer(
        self,
        body: Any,
        parse: Callable[[Any], ChatRequest] = parse_request,
        started: float | None = None,
    ) -> Answer:
        """Generates the reply to `body` (checked by `parse`); a RequestError (logged) when it
        cannot. `started`: when the request arrived (time.monotonic), for the log's timing."""
        started = time.monotonic() if started is None else started
        try:
            parsed = parse(body)
            prompt, params = self.chat.prepare(parsed)
            try:
                result = await self.batcher.submit(prompt, params, parsed.seeded)
            except Exception as exc:  # a generation failure is the server's, not the client's
                raise RequestError(f"generation failed: {exc!r}", status=500) from exc
        except RequestError as exc:
            self.log_failure(body, exc.status, exc.message, started)
            raise
        replies = [self.chat.reply(c, parsed) for c in result.completions]
        reply = completion_body(self.chat.model_id, len(prompt), result.completions, replies)
        if self.log is not None:
            self._log_reply(body, parsed, reply, result, started)
        return Answer(parsed, len(prompt), result.completions, reply)

    async def stream(
        self,
        body: Any,
        parse: Callable[[Any], ChatRequest] = parse_request,
        started: float | None = None,
    ) -> Stream:
        """Starts `body`'s generation in the next batch and returns once its first text (or its
        whole answer) is there, so a refused or failed request still raises RequestError
        (logged) before anything is sent. A failure after that is raised by `events`."""
        started = time.monotonic() if started is None else started
        try:
            parsed = parse(body)
            prompt, params = self.chat.prepare(parsed)
        except RequestError as exc:
            self.log_failure(body, exc.status, exc.message, started)
            raise
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def post(item: Any) -> None:  # from the generation thread
            loop.call_soon_threadsafe(queue.put_nowait, item)

        watch = self.chat.watch(parsed, params, post)
        future = self.batcher.enqueue(prompt, params, parsed.seeded, watch)
        future.add_done_callback(queue.put_nowait)  # the batch's result, or its failure
        run = _StreamRun(self, body, parsed, len(prompt), started, watch, future, queue)
        try:
            first = await run.next()
        except BaseException:
            run.close()
            raise
        return Stream(parsed, run.id, run.created, watch.incremental, run.events(first))

    def log_failure(self, body: Any, status: int, message: str, started: float) -> None:
        """Logs a refused or failed request (with `"response": null`), when logging."""
        if self.log is None:
            return
        error = {"status": status, "message": message}
        timing = {"total_s": time.monotonic() - started}
        record_id = f"chatcmpl-{uuid.uuid4().hex}"
        meta = _logged_metadata(body)
        self.log.write(record_id, self.chat.model_id, body, meta, None, error, timing, None)

    def _log_reply(
        self,
        body: Any,
        parsed: ChatRequest,
        reply: dict[str, Any],
        result: BatchResult,
        started: float,
    ) -> None:
        assert self.log is not None
        timing = {
            "queue_s": result.queue_s,
            "generate_s": result.generate_s,
            "total_s": time.monotonic() - started,
        }
        batch = {"id": result.batch_id, "size": result.batch_size}
        metadata = dict(parsed.metadata)
        self.log.write(reply["id"], self.chat.model_id, body, metadata, reply, None, timing, batch)


def _logged_metadata(body: Any) -> dict[str, str]:
    """The metadata of a request that failed: what of it is valid, for filtering the logs."""
    try:
        return request_metadata(body) if isinstance(body, Mapping) else {}
    except RequestError:
        return {}


class _StreamRun:
    """One streamed request: reads its queue (TextDelta items, its completions, then the
    batch's future) and logs it once the batch has run."""

    def __init__(
        self,
        service: ChatService,
        body: Any,
        parsed: ChatRequest,
        prompt_tokens: int,
        started: float,
        watch: StreamWatch,
        future: asyncio.Future[BatchResult],
        queue: asyncio.Queue[Any],
    ):
        self.service, self.body, self.parsed = service, body, parsed
        self.prompt_tokens, self.started = prompt_tokens, started
        self.watch, self.future, self.queue = watch, future, queue
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.answer: Answer | None = None

    async def next(self) -> TextDelta | list[Completion]:
        item = await self.queue.get()
        if not isinstance(item, asyncio.Future):
            return item
        if item.cancelled():
            raise asyncio.CancelledError
        exc = item.exception()
        if exc is not None:  # a generation failure is the server's, not the client's
            error = RequestError(f"generation failed: {exc!r}", status=500)
            self.service.log_failure(self.body, error.status, error.message, self.started)
            raise error from exc
        return list(item.result().completions)  # a generate that did not call the watch

    async def events(self, item: TextDelta | list[Completion]) -> AsyncIterator[Any]:
        sent = [""] * self.parsed.params.n
        try:
            while isinstance(item, TextDelta):
                sent[item.choice] += item.text
                yield item
                item = await self.next()
            answer = self._finish(item)
            if self.watch.incremental:
                for index, choice in enumerate(answer.reply["choices"]):
                    content = choice["message"]["content"] or ""
                    if not content.startswith(sent[index]):
                        log.warning("streamed text %r is not the reply's start", sent[index])
                    elif len(content) > len(sent[index]):
                        yield TextDelta(index, content[len(sent[index]) :])
            yield answer
        finally:
            self.close()

    def _finish(self, completions: list[Completion]) -> Answer:
        chat, parsed = self.service.chat, self.parsed
        replies = [chat.reply(c, parsed) for c in completions]
        reply = completion_body(chat.model_id, self.prompt_tokens, completions, replies)
        reply.update(id=self.id, created=self.created)
        self.answer = Answer(parsed, self.prompt_tokens, completions, reply)
        return self.answer

    def close(self) -> None:
        """The stream is over (or its client gone): a request not answered yet is dropped
        from its batch if that has not started; an answered one is logged once it has run."""
        if self.watch.closed:
            return
        self.watch.closed = True
        if self.answer is None:
            self.future.cancel()
        elif self.service.log is not None:
            self.future.add_done_callback(self._log)

    def _log(self, future: asyncio.Future[BatchResult]) -> None:
        if future.cancelled() or future.exception() is not None or self.answer is None:
            return
        reply, result = self.answer.reply, future.result()
        self.service._log_reply(self.body, self.parsed, reply, result, self.started)
