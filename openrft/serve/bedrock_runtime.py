"""Bedrock Runtime's API on `openrft serve`, so that boto3's `bedrock-runtime` client (pointed
at the server with `endpoint_url`) evaluates the served model as a Bedrock user would:

    POST /model/{modelId}/converse         Converse (openrft.serve.converse)
    POST /model/{modelId}/converse-stream  ConverseStream: AWS event-stream messages
    POST /model/{modelId}/invoke           InvokeModel with a chat body (openrft.serve.invoke)

`modelId` is the served model's id as GET /v1/models lists it; another id is a
ResourceNotFoundException. Errors are Bedrock's: `{"message": ...}` with the error code in
x-amzn-ErrorType, which botocore raises as ClientError. boto3 signs every request (SigV4);
the signature is checked when the server has an API key (openrft.serve.auth). Like the OpenAI
endpoint's stream, ConverseStream sends its text as it is decoded (openrft.serve.streaming):
messageStart once the first token is there, a text delta per decoded token, then
contentBlockStop, messageStop and metadata (usage) once the reply is done. With tools shown,
the reply's blocks (text, toolUse) are sent once generation is done, as the text may be a
tool call. A failure once the stream has begun is an internalServerException event, which
boto3 raises from the stream as EventStreamError.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from openrft.rollout.openai_chat import RequestError
from openrft.serve.bedrock_common import (
    BedrockError,
    chat_request,
    from_request_error,
    matched_stop,
    stop_reason,
    text_pieces,
)
from openrft.serve.chat_service import Answer, ChatService, Stream
from openrft.serve.converse import (
    chat_body,
    converse_reply,
    stream_end,
    stream_events,
    text_delta,
)
from openrft.serve.eventstream import MEDIA_TYPE, event_message, exception_message
from openrft.serve.invoke import (
    anthropic_chat_body,
    anthropic_reply,
    is_anthropic,
    openai_chat_body,
)
from openrft.serve.streaming import TextDelta

METADATA_HEADER = "x-amzn-bedrock-request-metadata"  # InvokeModel's requestMetadata (JSON)


def add_bedrock_routes(app: FastAPI, service: ChatService) -> None:
    """Adds the Bedrock Runtime routes over `service` to `app`."""

    @app.exception_handler(BedrockError)
    async def bedrock_error(request: Request, error: BedrockError) -> JSONResponse:
        headers = {**_request_id(), "x-amzn-ErrorType": error.code}
        return JSONResponse({"message": error.message}, error.status, headers=headers)

    @app.post("/model/{model_id:path}/converse")
    async def converse(model_id: str, request: Request) -> Response:
        started = time.monotonic()
        _, answer = await _answer(service, model_id, request, chat_body, started)
        reply = converse_reply(answer, _stop_reason(service, answer), _elapsed_ms(started))
        return JSONResponse(reply, headers=_request_id())

    @app.post("/model/{model_id:path}/converse-stream")
    async def converse_stream(model_id: str, request: Request) -> Response:
        started = time.monotonic()
        _, chat = await _translate(service, model_id, request, chat_body, started)
        try:
            stream = await service.stream(chat, chat_request, started)
        except RequestError as error:
            raise from_request_error(error) from error
        events = _converse_events(service, stream, started)
        return StreamingResponse(events, media_type=MEDIA_TYPE, headers=_request_id())

    @app.post("/model/{model_id:path}/invoke")
    async def invoke(model_id: str, request: Request) -> Response:
        started = time.monotonic()

        def translate(body: Any) -> dict[str, Any]:
            content_type = request.headers.get("content-type", "application/json")
            if not content_type.startswith("application/json"):
                raise BedrockError(f"contentType {content_type!r}: only application/json is read")
            if not isinstance(body, Mapping):
                raise BedrockError("the body must be a JSON object")
            chat = anthropic_chat_body(body) if is_anthropic(body) else openai_chat_body(body)
            metadata = _header_metadata(request.headers)
            return {**chat, "requestMetadata": metadata} if metadata else chat

        body, answer = await _answer(service, model_id, request, translate, started)
        reply = answer.reply
        if is_anthropic(body):
            stop, sequence = _anthropic_stop(service, answer)
            reply = anthropic_reply(answer, stop, sequence, service.chat.model_id)
        return JSONResponse(reply, headers=_request_id())


async def _converse_events(
    service: ChatService, stream: Stream, started: float
) -> AsyncIterator[bytes]:
    """ConverseStream's events: the text deltas as they are decoded, then the end."""
    if stream.incremental:
        yield event_message("messageStart", {"role": "assistant"})
    answer, streamed = None, False
    try:
        async for item in stream.events:
            if isinstance(item, TextDelta):
                yield text_delta(item.text)
                streamed = True
            else:
                answer = item
    except RequestError as error:
        yield exception_message("internalServerException", error.message)
        return
    assert answer is not None
    stop, latency_ms = _stop_reason(service, answer), _elapsed_ms(started)
    if stream.incremental:
        for event in stream_end(answer, stop, latency_ms, streamed):
            yield event
        return
    completion = answer.completions[0]
    pieces = text_pieces(service.chat.tokenizer, completion.token_ids, completion.text)
    for event in stream_events(answer, stop, latency_ms, pieces):
        yield event


async def _answer(
    service: ChatService,
    model_id: str,
    request: Request,
    translate: Callable[[Any], dict[str, Any]],
    started: float,
) -> tuple[Any, Answer]:
    """The request's JSON body and its answer; BedrockError (logged) when it has none."""
    body, chat = await _translate(service, model_id, request, translate, started)
    try:
        # Logged in chat-completions form, so `openrft data from-logs` reads these calls too.
        return body, await service.answer(chat, chat_request, started)
    except RequestError as error:
        raise from_request_error(error) from error


async def _translate(
    service: ChatService,
    model_id: str,
    request: Request,
    translate: Callable[[Any], dict[str, Any]],
    started: float,
) -> tuple[Any, dict[str, Any]]:
    """The request's JSON body and its chat-completions form; BedrockError (logged) when the
    request is not one this server serves."""
    body: Any = None
    try:
        if model_id != service.chat.model_id:
            raise BedrockError(
                f"model {model_id!r} is not served here; this server serves "
                f"{service.chat.model_id!r} (GET /v1/models)",
                "ResourceNotFoundException",
                404,
            )
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            raise BedrockError(f"the request body is not JSON: {exc}") from exc
        chat = translate(body)
    except BedrockError as error:
        service.log_failure(body, error.status, error.message, started)
        raise
    return body, chat


def _stop_reason(service: ChatService, answer: Answer) -> str:
    reason = answer.reply["choices"][0]["finish_reason"]
    return stop_reason(reason, answer.completions[0], service.chat.engine.end_token_ids)


def _anthropic_stop(service: ChatService, answer: Answer) -> tuple[str, str | None]:
    """Anthropic's stop_reason, and the stop sequence that ended the reply if one did."""
    stop = _stop_reason(service, answer)
    if stop != "stop_sequence":
        return stop, None
    completion = answer.completions[0]
    raw = service.chat.tokenizer.decode(list(completion.token_ids), skip_special_tokens=True)
    return stop, matched_stop(raw, completion.text, answer.request.params.stop)


def _header_metadata(headers: Mapping[str, str]) -> dict[str, Any] | None:
    text = headers.get(METADATA_HEADER)
    if not text:
        return None
    try:
        metadata = json.loads(text)
    except ValueError:
        metadata = None
    if not isinstance(metadata, dict):
        raise BedrockError("requestMetadata must be a JSON object of string pairs")
    return metadata


def _elapsed_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _request_id() -> dict[str, str]:
    # botocore reports it as ResponseMetadata.RequestId.
    return {"x-amzn-RequestId": str(uuid.uuid4())}
