"""Prompt rendering: chat messages -> the text (and token ids) the policy is conditioned on.

Owns the two chat templates openrft knows: "model" (the tokenizer's own template) and
"plain" ("<role>: <content>" lines ending with "assistant:"), selected by `model.chat_template`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from openrft.errors import ConfigError
from openrft.types import Message

if TYPE_CHECKING:
    # Only for annotations: importing transformers costs about a second.
    from transformers import PreTrainedTokenizerBase

CHAT_TEMPLATES: tuple[str, ...] = ("model", "plain")

_NO_TEMPLATE = (
    'the model\'s tokenizer has no chat template; set model.chat_template = "plain" to use '
    'openrft\'s plain template ("<role>: <content>" lines ending with "assistant:")'
)


def template_messages(messages: Sequence[Message] | Sequence[dict[str, Any]]) -> list[dict]:
    """Messages as chat templates expect them: OpenAI sends a tool call's `arguments` as a
    JSON string, but templates (Qwen's, Llama's) write `arguments | tojson`, which would
    quote the string a second time and show the model a call unlike the ones it writes.
    Arguments that parse as JSON go to the template as objects; the rest stay as sent."""
    out = []
    for message in messages:
        message = dict(message)
        if message.get("tool_calls"):
            message["tool_calls"] = [_template_call(call) for call in message["tool_calls"]]
        out.append(message)
    return out


def _template_call(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    arguments = function.get("arguments") if isinstance(function, dict) else None
    if not isinstance(arguments, str):
        return call
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return call
    return {**call, "function": {**function, "arguments": parsed}}


def render_prompt(
    messages: Sequence[Message],
    tokenizer: PreTrainedTokenizerBase,
    chat_template: str = "model",
    tools: Sequence[dict[str, Any]] | None = None,
) -> str:
    """The prompt text, ending where the model starts writing the assistant turn; with
    `tools` (OpenAI schemas), the template shows the model its tools."""
    if chat_template == "plain":
        lines = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return lines + "assistant:"
    if chat_template != "model":
        choices = ", ".join(repr(c) for c in CHAT_TEMPLATES)
        raise ConfigError("model.chat_template", f"unknown value {chat_template!r}; use {choices}")
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("model.chat_template", _NO_TEMPLATE)
    extra = {"tools": list(tools)} if tools else {}
    text = tokenizer.apply_chat_template(
        template_messages(messages), tokenize=False, add_generation_prompt=True, **extra
    )
    return str(text)


def encode_prompt(
    messages: Sequence[Message],
    tokenizer: PreTrainedTokenizerBase,
    chat_template: str = "model",
    tools: Sequence[dict[str, Any]] | None = None,
) -> list[int]:
    """The prompt's token ids. No special tokens are added: the template already has them."""
    text = render_prompt(messages, tokenizer, chat_template, tools)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
