"""`/v1/chat/completions` with `stream: true`: OpenAI's chat.completion.chunk events sent as the
text is decoded (openrft.serve.chat_service.Stream).

Per choice a role chunk first, then a content chunk per piece of new text, as each token is
decoded (choices interleaved, as OpenAI interleaves them); once a choice is done its tool calls
(when tools were shown, the whole message is sent then: its text may be tool calls) and its
finish chunk; the usage chunk if `stream_options.include_usage`; `data: [DONE]`. A failure
after the stream began is an `{"error": ...}` event, which the openai client raises as
APIError, and no `[DONE]`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from openrft.rollout.openai_chat import RequestError, stream_chunks, tool_call_deltas
from openrft.serve.chat_service import Answer, Stream
from openrft.serve.streaming import TextDelta


async def chunk_events(stream: Stream, model_id: str) -> AsyncIterator[str]:
    head = {"id": stream.id, "object": "chat.completion.chunk", "created": stream.created}
    head["model"] = model_id

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        return f"data: {json.dumps({**head, 'choices': choices, **extra})}\n\n"

    def delta(index: int, content: dict[str, Any]) -> str:
        return event([{"index": index, "delta": content, "finish_reason": None}])

    if stream.incremental:
        for index in range(stream.request.params.n):
            yield delta(index, {"role": "assistant", "content": ""})
    answer: Answer | None = None
    try:
        async for item in stream.events:
            if isinstance(item, TextDelta):
                yield delta(item.choice, {"content": item.text})
            else:
                answer = item
    except RequestError as error:
        body = {"message": error.message, "type": "server_error", "param": None, "code": None}
        yield f"data: {json.dumps({'error': body})}\n\n"
        return
    assert answer is not None
    if not stream.incremental:
        for chunk in stream_chunks(answer.reply, stream.request.include_usage):
            yield chunk
        return
    for choice in answer.reply["choices"]:
        for call in tool_call_deltas(choice["message"]):
            yield delta(choice["index"], call)
        finish = {"index": choice["index"], "delta": {}, "finish_reason": choice["finish_reason"]}
        yield event([finish])
    if stream.request.include_usage:
        yield event([], usage=answer.reply["usage"])
    yield "data: [DONE]\n\n"
