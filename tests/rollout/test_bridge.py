"""The bridge renders only what follows a sampled turn: prompt + sampled turn + bridge is
the template's own rendering of the whole conversation, text for text."""

from __future__ import annotations

import pytest
from tiny_model import build_tiny_tokenizer, build_tool_tokenizer

from openrft.data.render import render_prompt
from openrft.errors import ConfigError
from openrft.rollout.bridge import ChatBridge

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize("tools", [None, TOOLS])
def test_prompt_turn_and_bridge_concatenate_to_the_full_render(tools):
    tokenizer = build_tool_tokenizer()
    opening = [{"role": "user", "content": "What is 3 * 4?"}]
    answer = {"role": "assistant", "content": "Let me check."}
    env = [
        {"role": "tool", "tool_call_id": "c1", "content": "12"},
        {"role": "tool", "tool_call_id": "c2", "content": "7"},
        {"role": "user", "content": "And then?"},
    ]
    bridge = ChatBridge(tokenizer, "model", tools)
    pieces = render_prompt(opening, tokenizer, tools=tools) + answer["content"] + "<|im_end|>"
    pieces += bridge.text(env, turn_end="<|im_end|>")
    assert pieces == render_prompt([*opening, answer, *env], tokenizer, tools=tools)
    # a turn that ended without the end token gets the template's own end marker
    without = bridge.text(env, turn_end="")
    assert without == "<|im_end|>" + bridge.text(env, turn_end="<|im_end|>")
    assert (
        bridge.token_ids(env, "<|im_end|>")
        == tokenizer(bridge.text(env, "<|im_end|>"), add_special_tokens=False)["input_ids"]
    )


def test_plain_template_bridge():
    bridge = ChatBridge(build_tiny_tokenizer(), "plain")
    assert bridge.text([{"role": "user", "content": "more"}], "") == "\nuser: more\nassistant:"


def test_a_template_that_rewrites_history_is_refused():
    tokenizer = build_tiny_tokenizer()
    # renders the first user turn only when there is no tool message later
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m.role != 'user' or messages[-1].role != 'tool' %}"
        "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(ConfigError, match="renders earlier turns differently"):
        ChatBridge(tokenizer).text([{"role": "tool", "content": "1"}], "<|im_end|>")
