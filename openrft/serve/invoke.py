"""InvokeModel with a chat body, in one of two families, answered in the same family's shape:

- Anthropic Messages (the body has `anthropic_version`, as Bedrock requires of Claude):
  `messages` (content a string or a list of `{"type": "text", "text"}` blocks), `system` (a
  string or text blocks), `max_tokens` (required), `temperature`, `top_p`, `top_k`,
  `stop_sequences`. The reply: `{"id": "msg_...", "type": "message", "role": "assistant",
  "model", "content": [{"type": "text", "text"}], "stop_reason", "stop_sequence", "usage":
  {"input_tokens", "output_tokens"}}`. Tools are not taken here: use Converse's toolConfig.
- OpenAI Chat Completions (any other body): exactly what POST /v1/chat/completions takes,
  `stream` aside, answered with a `chat.completion`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from openrft.serve.bedrock_common import (
    BedrockError,
    check_number,
    check_object,
    check_strings,
)
from openrft.serve.chat_service import Answer

ANTHROPIC_FIELDS = (
    "anthropic_version",
    "messages",
    "system",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
)


def is_anthropic(body: Mapping[str, Any]) -> bool:
    return "anthropic_version" in body


def openai_chat_body(body: Mapping[str, Any]) -> dict[str, Any]:
    if body.get("stream"):
        raise BedrockError(
            "stream: InvokeModel answers in one body; use ConverseStream for a stream"
        )
    return dict(body)


def anthropic_chat_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages body as a Chat Completions body."""
    unknown = [key for key in body if key not in ANTHROPIC_FIELDS]
    if unknown:
        hint = " (use Converse's toolConfig for tools)" if "tools" in unknown else ""
        raise BedrockError(
            f"{', '.join(unknown)}: not supported by this server{hint}; it reads "
            f"{', '.join(ANTHROPIC_FIELDS)}"
        )
    if body.get("max_tokens") is None:
        raise BedrockError("max_tokens is required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BedrockError("messages must be a non-empty list")
    turns = [_turn(index, message) for index, message in enumerate(messages)]
    if body.get("system"):
        turns.insert(0, {"role": "system", "content": _content(body["system"], "system")})
    chat: dict[str, Any] = {
        "messages": turns,
        "max_tokens": check_number(body["max_tokens"], "max_tokens", 1, integer=True),
    }
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            chat[key] = check_number(body[key], key, 0, 1)
    if body.get("top_k") is not None:
        chat["top_k"] = check_number(body["top_k"], "top_k", 0, integer=True)
    if body.get("stop_sequences"):
        chat["stop"] = check_strings(body["stop_sequences"], "stop_sequences")
    return chat


def _turn(index: int, message: Any) -> dict[str, str]:
    where = f"messages[{index}]"
    message = check_object(message, where)
    if message.get("role") not in ("user", "assistant"):
        raise BedrockError(f"{where}.role must be user or assistant (system goes in `system`)")
    content = _content(message.get("content"), f"{where}.content")
    return {"role": message["role"], "content": content}


def _content(value: Any, where: str) -> str:
    """A string, or text blocks joined (a block's `cache_control` is a hint: ignored)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise BedrockError(f"{where} must be a string or a list of text blocks")
    texts = []
    for index, block in enumerate(value):
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind != "text" or not isinstance(block.get("text"), str):
            raise BedrockError(
                f"{where}[{index}]: {kind or 'this'} blocks are not supported (text is)"
            )
        texts.append(block["text"])
    return "".join(texts)


def anthropic_reply(
    answer: Answer, stop: str, stop_sequence: str | None, model_id: str
) -> dict[str, Any]:
    usage = answer.reply["usage"]
    return {
        "id": f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "model": model_id,
        "content": [{"type": "text", "text": answer.reply["choices"][0]["message"]["content"]}],
        "stop_reason": stop,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
        },
    }
