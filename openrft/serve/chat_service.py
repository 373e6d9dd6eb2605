"""The serving core every API of `openrft serve` translates to and from: a chat request in
Chat Completions form, checked, rendered, queued for a batch, and its reply shaped and logged.

OpenAI's chat endpoint (openrft.serve.app) hands it request bodies as they come; the Bedrock
Runtime endpoints (openrft.serve.bedrock_runtime) translate theirs first, so their calls are
logged in chat-completions form and `openrft data from-logs` reads them like any other.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
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
from openrft.types import Completion

if TYPE_CHECKING:  # app.py builds the service; importing it here would be circular
    from openrft.serve.app import ChatModel


@dataclass(frozen=True)
class Answer:
    """A served request: what was asked, what was generated and the chat.completion body."""

    request: ChatRequest
    prompt_tokens: int
    completions: list[Completion]
    reply: dict[str, Any]  # OpenAI's chat.completion, choices in the completions' order


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
