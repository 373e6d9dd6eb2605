"""Checks of the tool parts of a row, as Bedrock/Nova and OpenAI records carry them: a
`tools` list of OpenAI function schemas, assistant turns with `tool_calls`, and `tool` turns
answering a call by its `tool_call_id`. Each problem names its field."""

from __future__ import annotations

import json
from typing import Any

import jsonschema


def chat_tool(tool: Any) -> Any:
    """A tool schema in the Chat Completions shape chat templates read: {"type":
    "function", "function": {...}}. The flat shape of the Responses API and agent RFT
    ({"type": "function", "name", "parameters"}) is nested; anything else is returned as is."""
    if isinstance(tool, dict) and "function" not in tool and "name" in tool:
        return {"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}}
    return tool


def tool_schema_problems(tools: Any) -> list[tuple[str, str]]:
    """(field, message) for a row's `tools`: a list of {"type": "function", "function":
    {"name", "description"?, "parameters": a JSON Schema}} (or the flat {"type", "name",
    "parameters"} shape)."""
    if not isinstance(tools, list):
        return [("tools", "must be a list of tool schemas")]
    problems = []
    names = set()
    for i, tool in enumerate(tools):
        field = f"tools[{i}]"
        flat = isinstance(tool, dict) and "function" not in tool and "name" in tool
        tool = chat_tool(tool)
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            problems.append((field, 'must be {"type": "function", "function": {...}}'))
            continue
        if not isinstance(function, dict):
            problems.append((f"{field}.function", "missing; it holds name and parameters"))
            continue
        if not flat:  # the flat shape's fields sit on the tool itself
            field = f"{field}.function"
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append((f"{field}.name", "must be a non-empty string"))
        elif name in names:
            problems.append((f"{field}.name", f"{name!r} is declared twice"))
        else:
            names.add(name)
        parameters = function.get("parameters", {"type": "object"})
        if not isinstance(parameters, dict):
            problems.append((f"{field}.parameters", "must be a JSON Schema object"))
            continue
        try:
            jsonschema.Draft202012Validator.check_schema(parameters)
        except jsonschema.SchemaError as error:
            where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.path)
            problems.append(
                (f"{field}.parameters{where}", f"not valid JSON Schema: {error.message}")
            )
        except RecursionError:  # the metaschema check recurses several frames per level
            problems.append((f"{field}.parameters", "JSON Schema nests too deeply to check"))
    return problems


def tool_turn_problems(messages: list[Any]) -> list[tuple[str, str]]:
    """(field, message) for tool calls and tool turns: each call well formed, each tool turn
    answering an earlier call of this conversation by its id."""
    problems: list[tuple[str, str]] = []
    open_calls: set[str] = set()
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        field = f"messages[{i}]"
        if message.get("role") == "assistant" and "tool_calls" in message:
            calls = message["tool_calls"]
            if not isinstance(calls, list) or not calls:
                problems.append((f"{field}.tool_calls", "must be a non-empty list of calls"))
                continue
            for k, call in enumerate(calls):
                problems += _call_problems(f"{field}.tool_calls[{k}]", call, open_calls)
        elif message.get("role") == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                problems.append((f"{field}.tool_call_id", "missing; a tool turn answers a call"))
            elif call_id not in open_calls:
                problems.append(
                    (f"{field}.tool_call_id", f"{call_id!r} matches no earlier tool call")
                )
    return problems


def _call_problems(field: str, call: Any, open_calls: set[str]) -> list[tuple[str, str]]:
    if not isinstance(call, dict):
        return [(field, "must be an object with id, type and function")]
    problems = []
    if not isinstance(call.get("id"), str):
        problems.append((f"{field}.id", "must be a string (tool turns answer it)"))
    else:
        open_calls.add(call["id"])
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        problems.append((f"{field}.function.name", "missing"))
        return problems
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as error:
            problems.append((f"{field}.function.arguments", f"not valid JSON: {error.msg}"))
            return problems
        except RecursionError:
            problems.append((f"{field}.function.arguments", "not usable JSON: nests too deeply"))
            return problems
    if not isinstance(arguments, dict):
        problems.append((f"{field}.function.arguments", "must be a JSON object (as a string)"))
    return problems


def has_tool_calls(message: Any) -> bool:
    return isinstance(message, dict) and bool(message.get("tool_calls"))
