"""Prompt rendering: chat messages -> the text (and token ids) the policy is conditioned on.

Owns the two chat templates openrft knows: "model" (the tokenizer's own template) and
"plain" ("<role>: <content>" lines ending with "assistant:"), selected by `model.chat_template`.
"""

from __future__ import annotations

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
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=True, **extra
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
