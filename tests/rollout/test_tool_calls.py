"""Tool-call parsers (hermes, llama3_json) and the choice of parser from a chat template."""

from __future__ import annotations

import json

import pytest
from tiny_model import CHATML, CHATML_TOOLS

from openrft.errors import ConfigError
from openrft.rollout.tool_calls import (
    MalformedCall,
    ToolCall,
    parse_hermes,
    parse_llama3_json,
    parser_for,
)


def test_hermes_reads_calls_and_keeps_the_text():
    text = (
        'Let me compute.\n<tool_call>\n{"name": "multiply", "arguments": {"a": 3, "b": 4}}\n'
        '</tool_call>\n<tool_call>{"name": "add", "arguments": "{\\"a\\": 1}"}</tool_call>'
    )
    turn = parse_hermes(text)
    assert turn.content == "Let me compute."
    assert [(c.name, c.arguments) for c in turn.calls] == [
        ("multiply", {"a": 3, "b": 4}),
        ("add", {"a": 1}),  # arguments written as a JSON string are read too
    ]
    assert turn.calls[0].id != turn.calls[1].id
    message = turn.message()
    assert message["tool_calls"][0]["function"] == {
        "name": "multiply",
        "arguments": json.dumps({"a": 3, "b": 4}),
    }


def test_hermes_malformed_calls_are_kept_with_the_problem():
    turn = parse_hermes('<tool_call>{"name": "f", "arguments": {"a": </tool_call>ok')
    assert turn.calls == () and turn.content == "ok"
    (bad,) = turn.malformed
    assert isinstance(bad, MalformedCall) and "not valid JSON" in bad.problem
    assert turn.wants_tools
    assert "tool_calls" not in turn.message()
    # an unclosed block (the turn ended inside it) is read to the end
    assert parse_hermes('<tool_call>{"name": "f", "arguments": {}}').calls[0].name == "f"
    assert "name" in parse_hermes('<tool_call>["f"]</tool_call>').malformed[0].problem


def test_hermes_without_calls_is_plain_text():
    turn = parse_hermes("  The answer is 12.  ")
    assert turn == type(turn)("The answer is 12.")
    assert not turn.wants_tools and turn.message() == {"role": "assistant", "content": turn.content}


def test_llama3_json_calls():
    turn = parse_llama3_json('<|python_tag|>{"name": "f", "parameters": {"x": 1}}; {"name": "g"}')
    assert [(c.name, c.arguments) for c in turn.calls] == [("f", {"x": 1}), ("g", {})]
    assert parse_llama3_json("The answer is 4.").content == "The answer is 4."
    broken = parse_llama3_json('{"name": "f", "parameters": {')
    assert broken.calls == () and len(broken.malformed) == 1
    assert isinstance(parse_llama3_json('{"name": "f"}').calls[0], ToolCall)


def test_parser_for_reads_the_template():
    assert parser_for("auto", CHATML_TOOLS)[0] == "hermes"
    assert parser_for("auto", "{{ tools }} <|python_tag|>")[0] == "llama3_json"
    assert parser_for("llama3_json", CHATML)[0] == "llama3_json"
    with pytest.raises(ConfigError, match="no tool support"):
        parser_for("auto", CHATML)
    with pytest.raises(ConfigError, match="unknown parser"):
        parser_for("mistral", CHATML_TOOLS)


def test_hermes_reads_a_bare_call_without_its_tags():
    bare = '{"name": "multiply", "arguments": {"a": 3, "b": 4}}'
    for text in (bare, f"```json\n{bare}\n```", f"  {bare}\n"):
        turn = parse_hermes(text)
        assert [(c.name, c.arguments) for c in turn.calls] == [("multiply", {"a": 3, "b": 4})]
    # JSON that is not exactly a call stays text
    assert parse_hermes('{"name": "x"}').calls == ()
    assert parse_hermes('The call {"name": "f", "arguments": {}} is shown').calls == ()
    # several calls as JSON lines (how Qwen2.5-Coder-0.5B writes a chain): each a call
    second = '{"name": "add", "arguments": {"a": 12, "b": 1}}'
    turn = parse_hermes(f"{bare}\n{second}\n")
    assert [c.name for c in turn.calls] == ["multiply", "add"] and turn.content == ""
    assert parse_hermes(f"{bare}\nthen add one").calls == ()  # a line that is no call: text
