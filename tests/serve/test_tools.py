"""Tool calling through the server with the real `openai` client: tools shown through the
template, calls returned as `tool_calls` (and as stream deltas), tool turns accepted, the
choices the server cannot honour refused."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
import torch
from tiny_model import CHATML_TOOLS

from openrft.models.load import load_model
from openrft.rollout.openai_chat import parse_request, stream_chunks
from openrft.serve.app import ChatModel, build_app
from openrft.types import Completion

from . import running_server

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "multiply",
            "description": "Multiply two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    }
]
CONVERSATION = [
    {"role": "user", "content": "what is 12 plus 30 ?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "multiply",
                                                      "arguments": '{"a": 12, "b": 30}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "360"},
]  # fmt: skip


@pytest.fixture(scope="module")
def chat(tiny_model_dir) -> ChatModel:
    torch.set_num_threads(1)
    model, tokenizer = load_model(str(tiny_model_dir))
    tokenizer.chat_template = CHATML_TOOLS
    return ChatModel(model.eval(), tokenizer, "tiny-tools")


@pytest.fixture(scope="module")
def client(chat) -> Iterator[openai.OpenAI]:
    with running_server(build_app(chat)) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_tools_reach_the_prompt_and_tool_turns_are_accepted(client, chat):
    reply = client.chat.completions.create(
        model="tiny-tools", messages=CONVERSATION, tools=TOOLS, max_tokens=4, seed=1
    )
    assert reply.choices[0].message.role == "assistant"
    request = parse_request({"messages": CONVERSATION, "tools": TOOLS})
    prompt, _ = chat.prepare(request)
    text = chat.tokenizer.decode(prompt)
    assert '"name": "multiply"' in text  # the schema, shown by the template
    assert "<tool_response>\n360\n</tool_response>" in text  # the tool turn, rendered
    none = chat.prepare(parse_request({"messages": CONVERSATION, "tools": TOOLS,
                                       "tool_choice": "none"}))[0]  # fmt: skip
    assert "<tools>" not in chat.tokenizer.decode(none)


def test_a_call_the_model_writes_comes_back_as_tool_calls(chat):
    request = parse_request({"messages": CONVERSATION[:1], "tools": TOOLS})
    text = '<tool_call>{"name": "multiply", "arguments": {"a": 12, "b": 30}}</tool_call>'
    ids = chat.tokenizer(text, add_special_tokens=False)["input_ids"]
    message, reason = chat.reply(Completion(tuple(ids), text, "stop"), request)
    assert reason == "tool_calls" and message["content"] is None
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "multiply", "arguments": '{"a": 12, "b": 30}'}
    # without tools the same text is just text
    plain, plain_reason = chat.reply(
        Completion(tuple(ids), text, "stop"), parse_request({"messages": CONVERSATION[:1]})
    )
    assert plain_reason == "stop" and plain == {"role": "assistant", "content": text}
    # streamed: a role chunk, then the call as a delta, then finish_reason tool_calls
    reply = {"id": "x", "created": 1, "model": "m", "choices": [
        {"index": 0, "message": message, "finish_reason": reason}]}  # fmt: skip
    events = [json.loads(e[6:]) for e in stream_chunks(reply, False) if e != "data: [DONE]\n\n"]
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas[1]["tool_calls"][0]["function"]["name"] == "multiply"
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("extra", "param", "fragment"),
    [
        ({"tool_choice": "required"}, "tool_choice", "constrained decoding"),
        ({"tool_choice": {"type": "function", "function": {"name": "multiply"}}}, "tool_choice",
         "constrained decoding"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]},
         "tools", "not valid JSON Schema"),
        ({"functions": [{"name": "f"}]}, "functions", "deprecated"),
    ],
)  # fmt: skip
def test_what_the_server_cannot_honour_is_refused(client, extra, param, fragment):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny-tools", messages=CONVERSATION[:1], **{"tools": TOOLS, **extra}
        )
    error = info.value.body
    assert error["param"] == param and fragment in error["message"]


def test_a_tool_turn_without_its_call_id_is_refused(client):
    with pytest.raises(openai.BadRequestError, match="tool_call_id"):
        client.chat.completions.create(
            model="tiny-tools", messages=[*CONVERSATION[:2], {"role": "tool", "content": "1"}]
        )


def test_a_model_without_tool_support_refuses_tools(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir))  # plain ChatML: no tools
    chat = ChatModel(model, tokenizer, "tiny")
    with running_server(build_app(chat)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="cannot take tools"):
            client.chat.completions.create(model="tiny", messages=CONVERSATION[:1], tools=TOOLS)
