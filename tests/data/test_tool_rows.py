"""Tool schemas and tool turns in dataset rows: accepted in OpenAI's shape, and every
problem named by line and field."""

from __future__ import annotations

import json

from openrft.data.load import validate_line

TOOL = {
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
CALL = {"id": "c1", "type": "function", "function": {"name": "multiply", "arguments": '{"a": 1}'}}


def check(row):
    example, errors = validate_line(json.dumps(row), "rows.jsonl", 7)
    return example, [str(e) for e in errors]


def test_a_row_with_tools_and_tool_turns_is_accepted():
    row = {
        "messages": [
            {"role": "user", "content": "What is 3817 * 2944?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": "11237248"},
        ],
        "tools": [TOOL],
        "reference_answer": "11237248",
    }
    example, errors = check(row)
    assert errors == []
    assert example.metadata["tools"] == [TOOL]


def test_tool_problems_name_line_and_field():
    bad_schema = {**TOOL, "function": {**TOOL["function"], "parameters": {"type": "objekt"}}}
    row = {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "function": {"name": "f", "arguments": "{oops"}}]},
            {"role": "tool", "tool_call_id": "c2", "content": "1"},
            {"role": "tool", "content": "1"},
        ],
        "tools": [bad_schema, {"type": "function", "function": {"name": "multiply"}}, "x"],
    }  # fmt: skip
    _, errors = check(row)
    assert errors == [
        "rows.jsonl:7: messages[1].tool_calls[0].function.arguments: not valid JSON: "
        "Expecting property name enclosed in double quotes",
        "rows.jsonl:7: messages[2].tool_call_id: 'c2' matches no earlier tool call",
        "rows.jsonl:7: messages[3].tool_call_id: missing; a tool turn answers a call",
        "rows.jsonl:7: tools[0].function.parameters.type: not valid JSON Schema: 'objekt' is "
        "not valid under any of the given schemas",
        "rows.jsonl:7: tools[1].function.name: 'multiply' is declared twice",
        'rows.jsonl:7: tools[2]: must be {"type": "function", "function": {...}}',
    ]
