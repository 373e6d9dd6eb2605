"""render_prompt / encode_prompt: the plain template, the model's template, missing template."""

from __future__ import annotations

import copy

import pytest

from openrft.data import encode_prompt, render_prompt
from openrft.errors import ConfigError
from openrft.types import Message

MESSAGES: list[Message] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "the movie was great"},
]


def test_plain_template() -> None:
    text = render_prompt(MESSAGES, tokenizer=None, chat_template="plain")  # type: ignore[arg-type]
    assert text == "system: Be brief.\nuser: the movie was great\nassistant:"


def test_model_template_uses_the_tokenizer_chat_template(tiny_tokenizer) -> None:
    text = render_prompt(MESSAGES, tiny_tokenizer)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nthe movie was great<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("template", ["model", "plain"])
def test_encode_prompt_adds_no_extra_special_tokens(tiny_tokenizer, template: str) -> None:
    ids = encode_prompt(MESSAGES, tiny_tokenizer, template)
    text = render_prompt(MESSAGES, tiny_tokenizer, template)
    assert ids == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids) == text
    bos = tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(bos) == (3 if template == "model" else 0)


def test_tokenizer_without_chat_template(tiny_tokenizer) -> None:
    bare = copy.deepcopy(tiny_tokenizer)
    bare.chat_template = None
    with pytest.raises(ConfigError) as info:
        render_prompt(MESSAGES, bare)
    assert info.value.field == "model.chat_template"
    assert 'model.chat_template = "plain"' in str(info.value)
    # The plain template needs no chat template.
    assert encode_prompt(MESSAGES, bare, "plain")


def test_unknown_template_name(tiny_tokenizer) -> None:
    with pytest.raises(ConfigError, match="unknown value 'chatml'"):
        render_prompt(MESSAGES, tiny_tokenizer, "chatml")


def test_tool_call_arguments_reach_the_template_as_objects() -> None:
    """OpenAI sends arguments as a JSON string; Qwen2.5-style templates write them with
    `tojson`, which would quote the string again: the model would be shown calls unlike the
    ones it writes (and imitate them)."""
    from tiny_model import build_tool_tokenizer

    from openrft.data.render import template_messages

    call = {"id": "c0", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    bad = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "not json"}}
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [call, bad]},
    ]
    shaped = template_messages(messages)
    assert shaped[1]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert shaped[1]["tool_calls"][1] == bad  # not JSON: left as sent
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'  # not mutated
    text = render_prompt(
        messages[:1] + [{**messages[1], "tool_calls": [call]}], build_tool_tokenizer()
    )
    assert '"arguments": {"a": 1}}' in text and '\\"a\\"' not in text
