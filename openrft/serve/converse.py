"""Bedrock's Converse and ConverseStream, translated to and from the chat core
(openrft.serve.chat_service). The shapes are botocore's `bedrock-runtime` service model.

A request's `system` text blocks become a system turn, its messages' text blocks a turn each
(blocks joined as `openrft data from-logs` joins them, so a tuned model sees the prompt it
trained on); `toolUse` blocks in assistant messages become the turn's tool calls and
`toolResult` blocks in user messages tool turns, so a client runs a tool loop as on Bedrock.
`toolConfig` tools are shown to the model through its chat template as the OpenAI endpoint
shows them; calls the model writes come back as `toolUse` blocks with stopReason `tool_use`.
What the server cannot honour is refused with a ValidationException naming it, never ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from openrft.serve.bedrock_common import (
    BedrockError,
    check_number,
    check_object,
    check_strings,
)
from openrft.serve.chat_service import Answer
from openrft.serve.eventstream import event_message

# Hints about billing, latency tier and project: they do not change what the model writes.
IGNORED_FIELDS = ("performanceConfig", "serviceTier", "projectIdentifier")
REFUSED_FIELDS = {
    "guardrailConfig": "guardrails are not applied by this server",
    "promptVariables": "prompt management is not supported: send the prompt's messages",
    "outputConfig": "structured output needs constrained decoding, which this server does not do",
    "additionalModelResponseFieldPaths": "this server returns no additional model fields",
}
FIELDS = (
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "additionalModelRequestFields",
    "requestMetadata",
    *IGNORED_FIELDS,
    *REFUSED_FIELDS,
)
INFERENCE = {"maxTokens": "max_tokens", "temperature": "temperature", "topP": "top_p"}
MESSAGE_BLOCKS = "text, toolUse (assistant), toolResult (user) and cachePoint"


def chat_body(body: Any) -> dict[str, Any]:
    """A Converse request body as a Chat Completions body; BedrockError names what is wrong."""
    body = check_object(body, "the request body")
    _check_fields(body)
    messages = [*_system(body.get("system")), *_conversation(body.get("messages"))]
    chat: dict[str, Any] = {"messages": messages, **_inference(body.get("inferenceConfig"))}
    chat.update(_tools(body.get("toolConfig")))
    if body.get("requestMetadata") is not None:
        chat["requestMetadata"] = body["requestMetadata"]
    return chat


def _check_fields(body: Mapping[str, Any]) -> None:
    for key, value in body.items():
        if key not in FIELDS:
            raise BedrockError(f"unknown field {key!r} (Converse takes: {', '.join(FIELDS)})")
        if key in REFUSED_FIELDS and value:
            raise BedrockError(f"{key}: {REFUSED_FIELDS[key]}")
    extra = body.get("additionalModelRequestFields")
    if extra:  # model-specific knobs: honouring a few silently would mislead
        names = ", ".join(extra) if isinstance(extra, Mapping) else repr(extra)
        raise BedrockError(
            f"additionalModelRequestFields ({names}) are not supported by this server: use "
            "inferenceConfig (maxTokens, temperature, topP, stopSequences)"
        )


def _system(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BedrockError("system must be a list of content blocks")
    texts = []
    for index, block in enumerate(value):
        where = f"system[{index}]"
        kind = _block_kind(block, where)
        if kind == "text":
            texts.append(_text(block[kind], where))
        elif kind != "cachePoint":  # a cache hint changes nothing here
            raise BedrockError(f"{where}: {kind} blocks are not supported (text, cachePoint are)")
    return [{"role": "system", "content": "".join(texts)}] if texts else []


def _conversation(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise BedrockError("messages must be a non-empty list")
    return [turn for index, message in enumerate(value) for turn in _turns(index, message)]


def _turns(index: int, message: Any) -> list[dict[str, Any]]:
    """One Converse message as chat turns: its tool results (tool turns) first, then its text
    and tool calls as one turn."""
    where = f"messages[{index}]"
    message = check_object(message, where)
    role, content = message.get("role"), message.get("content")
    if role not in ("user", "assistant"):
        raise BedrockError(f"{where}.role must be user or assistant (system goes in `system`)")
    if not isinstance(content, list):
        raise BedrockError(f"{where}.content must be a list of content blocks")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for number, block in enumerate(content):
        at = f"{where}.content[{number}]"
        kind = _block_kind(block, at)
        if kind == "text":
            texts.append(_text(block[kind], at))
        elif kind == "toolUse" and role == "assistant":
            calls.append(_tool_call(block[kind], at))
        elif kind == "toolResult" and role == "user":
            turns.append(_tool_turn(block[kind], at))
        elif kind != "cachePoint":
            raise BedrockError(f"{at}: {kind} blocks are not supported ({MESSAGE_BLOCKS} are)")
    if texts or calls or not turns:
        turn: dict[str, Any] = {"role": role, "content": "".join(texts)}
        turns.append({**turn, "tool_calls": calls} if calls else turn)
    return turns


def _block_kind(block: Any, where: str) -> str:
    """The member a content block sets (a union: exactly one)."""
    if not isinstance(block, Mapping) or len(block) != 1:
        raise BedrockError(f"{where} must be a content block with exactly one member")
    return next(iter(block))


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BedrockError(f"{where}.text must be a string")
    return value


def _tool_call(value: Any, where: str) -> dict[str, Any]:
    use = check_object(value, f"{where}.toolUse")
    call_id, name = use.get("toolUseId"), use.get("name")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise BedrockError(f"{where}.toolUse needs a toolUseId and a name")
    arguments = json.dumps(use.get("input", {}))
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_turn(value: Any, where: str) -> dict[str, Any]:
    """A toolResult as a tool turn: its text and JSON blocks as the content. Its `status` is
    not shown: chat templates have no place for it."""
    result = check_object(value, f"{where}.toolResult")
    call_id, content = result.get("toolUseId"), result.get("content")
    if not isinstance(call_id, str) or not call_id or not isinstance(content, list):
        raise BedrockError(f"{where}.toolResult needs a toolUseId and a content list")
    parts = []
    for number, block in enumerate(content):
        at = f"{where}.toolResult.content[{number}]"
        kind = _block_kind(block, at)
        if kind == "text":
            parts.append(_text(block[kind], at))
        elif kind == "json":
            parts.append(json.dumps(block[kind], ensure_ascii=False))
        else:
            raise BedrockError(f"{at}: {kind} blocks are not supported (text and json are)")
    return {"role": "tool", "tool_call_id": call_id, "content": "".join(parts)}


def _inference(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    config = check_object(value, "inferenceConfig")
    unknown = [key for key in config if key not in (*INFERENCE, "stopSequences")]
    if unknown:
        raise BedrockError(f"inferenceConfig: unknown field(s) {', '.join(unknown)}")
    chat: dict[str, Any] = {}
    if config.get("maxTokens") is not None:
        chat["max_tokens"] = check_number(
            config["maxTokens"], "inferenceConfig.maxTokens", 1, integer=True
        )
    for key in ("temperature", "topP"):
        if config.get(key) is not None:
            chat[INFERENCE[key]] = check_number(config[key], f"inferenceConfig.{key}", 0, 1)
    if config.get("stopSequences"):
        chat["stop"] = check_strings(config["stopSequences"], "inferenceConfig.stopSequences")
    return chat


def _tools(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    config = check_object(value, "toolConfig")
    tools = config.get("tools")
    if not isinstance(tools, list) or not tools:
        raise BedrockError("toolConfig.tools must be a non-empty list")
    choice = config.get("toolChoice")
    if choice is not None and _block_kind(choice, "toolConfig.toolChoice") != "auto":
        raise BedrockError(
            f"toolConfig.toolChoice {json.dumps(choice)} is not supported: it needs "
            "constrained decoding; use auto (the model decides) or leave toolChoice out"
        )
    specs = []
    for index, tool in enumerate(tools):
        where = f"toolConfig.tools[{index}]"
        kind = _block_kind(tool, where)
        if kind == "toolSpec":
            specs.append(_function(tool[kind], f"{where}.toolSpec"))
        elif kind != "cachePoint":
            raise BedrockError(f"{where}: {kind} is not supported (toolSpec is)")
    return {"tools": specs, "tool_choice": "auto"}


def _function(value: Any, where: str) -> dict[str, Any]:
    """A toolSpec as a Chat Completions tool (its JSON Schema checked by the chat core)."""
    spec = check_object(value, where)
    schema = spec.get("inputSchema")
    if not isinstance(spec.get("name"), str) or not isinstance(schema, Mapping):
        raise BedrockError(f"{where} needs a name and an inputSchema")
    if "json" not in schema:
        raise BedrockError(f"{where}.inputSchema must hold its JSON Schema as `json`")
    function = {"name": spec["name"], "parameters": schema["json"]}
    if spec.get("description") is not None:
        function["description"] = spec["description"]
    return {"type": "function", "function": function}


# --- replies -----------------------------------------------------------------------------------


def converse_reply(answer: Answer, stop: str, latency_ms: int) -> dict[str, Any]:
    """The ConverseResponse body."""
    message = answer.reply["choices"][0]["message"]
    return {
        "output": {"message": {"role": "assistant", "content": content_blocks(message)}},
        "stopReason": stop,
        "usage": token_usage(answer),
        "metrics": {"latencyMs": latency_ms},
    }


def token_usage(answer: Answer) -> dict[str, int]:
    usage = answer.reply["usage"]
    return {
        "inputTokens": usage["prompt_tokens"],
        "outputTokens": usage["completion_tokens"],
        "totalTokens": usage["total_tokens"],
    }


def content_blocks(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A chat reply message as Converse content: its text (always, unless it only calls tools),
    then a toolUse block per call."""
    text, calls = message.get("content") or "", message.get("tool_calls") or []
    blocks: list[dict[str, Any]] = [{"text": text}] if text or not calls else []
    return blocks + [{"toolUse": _tool_use(call)} for call in calls]


def _tool_use(call: Mapping[str, Any]) -> dict[str, Any]:
    function = call["function"]
    arguments = json.loads(function["arguments"])
    return {"toolUseId": call["id"], "name": function["name"], "input": arguments}


def stream_events(
    answer: Answer, stop: str, latency_ms: int, pieces: Sequence[str]
) -> Iterator[bytes]:
    """The reply as ConverseStream's event-stream messages: messageStart; per content block its
    deltas (the text in `pieces`, one per token, when they join to it; a tool call's input as
    one JSON delta after a contentBlockStart) and contentBlockStop; messageStop; metadata."""
    message = answer.reply["choices"][0]["message"]
    yield event_message("messageStart", {"role": "assistant"})
    for index, block in enumerate(content_blocks(message)):
        if "text" in block:
            text = block["text"]
            deltas = list(pieces) if pieces and "".join(pieces) == text else [text]
            for piece in deltas:
                delta = {"delta": {"text": piece}, "contentBlockIndex": index}
                yield event_message("contentBlockDelta", delta)
        else:
            use = block["toolUse"]
            start = {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}
            yield event_message("contentBlockStart", {"start": start, "contentBlockIndex": index})
            delta = {"toolUse": {"input": json.dumps(use["input"], ensure_ascii=False)}}
            yield event_message("contentBlockDelta", {"delta": delta, "contentBlockIndex": index})
        yield event_message("contentBlockStop", {"contentBlockIndex": index})
    yield event_message("messageStop", {"stopReason": stop})
    metadata = {"usage": token_usage(answer), "metrics": {"latencyMs": latency_ms}}
    yield event_message("metadata", metadata)


def text_delta(text: str) -> bytes:
    """A contentBlockDelta of the text block a streamed reply without tools has (index 0)."""
    return event_message("contentBlockDelta", {"delta": {"text": text}, "contentBlockIndex": 0})


def stream_end(answer: Answer, stop: str, latency_ms: int, streamed: bool) -> Iterator[bytes]:
    """The end of a reply whose text was streamed as it was decoded (`streamed`: some text was
    sent; if none, one empty delta, as a reply with no text has): contentBlockStop,
    messageStop, metadata."""
    if not streamed:
        yield text_delta("")
    yield event_message("contentBlockStop", {"contentBlockIndex": 0})
    yield event_message("messageStop", {"stopReason": stop})
    metadata = {"usage": token_usage(answer), "metrics": {"latencyMs": latency_ms}}
    yield event_message("metadata", metadata)
