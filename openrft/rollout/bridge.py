"""Token continuity between turns: only the environment's new messages are rendered.

An episode's history is never re-rendered through the chat template: the tokens the policy
sampled stay as sampled, and after each assistant turn only the text the template puts
between that turn's end and the next assistant turn's start (the end-of-turn separator, the
environment's messages, the next generation prompt) is rendered and tokenized, then
appended. Re-rendering breaks training when a template rewrites history (Qwen3 strips earlier
reasoning) or drops separators at assistant->tool boundaries (verl #6854, prime-rl #1334).

The bridge text comes from rendering a fixed two-turn conversation with and without the new
messages: the difference, after the marker assistant content, is what the template writes
there. Templates that render a message differently depending on later ones cannot be
bridged and are refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from openrft.data.render import template_messages
from openrft.errors import ConfigError

_MARKER = "\u2063openrft-bridge\u2063"  # assistant content that no template rewrites


class ChatBridge:
    """Renders environment messages as the tokens that follow a sampled assistant turn."""

    def __init__(
        self,
        tokenizer: Any,
        chat_template: str = "model",
        tools: Sequence[dict[str, Any]] | None = None,
    ):
        self.tokenizer = tokenizer
        self.plain = chat_template == "plain"
        self.tools = list(tools) if tools else None
        if not self.plain:
            base = self._render([{"role": "assistant", "content": _MARKER}], generation=False)
            self.after_assistant = base[base.rindex(_MARKER) + len(_MARKER) :]
            self.base = base

    def _render(self, tail: list[dict[str, Any]], generation: bool) -> str:
        messages = template_messages([{"role": "user", "content": "Hi."}, *tail])
        kwargs: dict[str, Any] = {"tools": self.tools} if self.tools else {}
        return str(
            self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation, **kwargs
            )
        )

    def text(self, messages: Sequence[dict[str, Any]], turn_end: str) -> str:
        """What follows an assistant turn whose sampled text ended with `turn_end` (the
        decoded end-of-turn token, or "" when the turn stopped without one): the rest of the
        template's separator, the messages, and the next assistant turn's opening."""
        if self.plain:
            lines = "".join(f"{m['role']}: {m.get('content') or ''}\n" for m in messages)
            return "\n" + lines + "assistant:"
        full = self._render(
            [{"role": "assistant", "content": _MARKER}, *map(dict, messages)], generation=True
        )
        if not full.startswith(self.base.removesuffix(self.after_assistant)):
            raise ConfigError(
                "model.chat_template",
                "the chat template renders earlier turns differently once later messages "
                "follow, so an episode's sampled tokens cannot be continued token for token",
            )
        start = full.rindex(_MARKER) + len(_MARKER)
        bridge = full[start:]
        if turn_end and bridge.startswith(turn_end):
            bridge = bridge[len(turn_end) :]  # the policy already sampled the end marker
        return bridge

    def token_ids(self, messages: Sequence[dict[str, Any]], turn_end: str) -> list[int]:
        """The bridge's token ids (no special tokens added: the text has its own)."""
        return list(
            self.tokenizer(self.text(messages, turn_end), add_special_tokens=False)["input_ids"]
        )
