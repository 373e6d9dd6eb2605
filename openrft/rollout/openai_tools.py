"""Tool calling in OpenAI's Chat Completions protocol (the chat server and the agent proxy), as
OpenAI's API does it: `tools` and `tool_choice` in the request, the model shown its tools
through its chat template, its calls read by the parser its template implies
(openrft.rollout.tool_calls) and returned as `tool_calls` with `finish_reason: "tool_calls"`;
assistant turns with `tool_calls` and `tool` turns answering them by `tool_call_id` accepted in
`messages`, so a client runs the loop.

`tool_choice`: "auto" (the default with tools) and "none" (tools not shown). "required" and a
named function need constrained decoding, which this server does not do: refused with a 400,
never silently treated as "auto".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from openrft.data.tool_rows import chat_tool, tool_schema_problems
from openrft.errors import ConfigError
from openrft.rollout.tool_calls import ParsedTurn, ToolCallParser, parser_for


class ToolRequestError(ValueError):
    """A bad `tools`/`tool_choice`/tool message: (message, param) for a 400."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.message, self.param = message, param


@dataclass(frozen=True)
class ToolRequest:
    tools: tuple[dict[str, Any], ...]  # Chat Completions shape
    choice: str  # "auto" or "none"

    @property
    def shown(self) -> tuple[dict[str, Any], ...]:
        """The tools the model is shown (none with tool_choice "none")."""
        return self.tools if self.choice == "auto" else ()


def parse_tools(body: Mapping[str, Any]) -> ToolRequest | None:
    """The request's tools and tool choice; None without tools."""
    for legacy in ("functions", "function_call"):
        if body.get(legacy):
            raise ToolRequestError(f"'{legacy}' is the deprecated form; use 'tools'", legacy)
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools:
        if choice not in (None, "none"):
            raise ToolRequestError("'tool_choice' needs 'tools'", "tool_choice")
        return None
    problems = tool_schema_problems(tools)
    if problems:
        field, message = problems[0]
        raise ToolRequestError(f"{field}: {message}", "tools")
    choice = "auto" if choice is None else choice
    if choice not in ("auto", "none"):
        raise ToolRequestError(
            f"tool_choice {json.dumps(choice)} is not supported: it needs constrained decoding; "
            "use 'auto' (the model decides) or 'none'",
            "tool_choice",
        )
    return ToolRequest(tuple(chat_tool(t) for t in tools), choice)


def tool_message_fields(where: str, message: Mapping[str, Any]) -> dict[str, Any]:
    """The tool-calling fields of a request message, kept for the chat template: an
    assistant turn's `tool_calls`, a tool turn's `tool_call_id` (and `name`)."""
    role = message.get("role")
    if role == "assistant" and message.get("tool_calls") is not None:
        calls = message["tool_calls"]
        if not isinstance(calls, list) or not all(
            isinstance(c, Mapping) and isinstance(c.get("function"), Mapping) for c in calls
        ):
            raise ToolRequestError(f"{where}.tool_calls must be a list of calls", where)
        return {"tool_calls": [_template_call(c) for c in calls]}
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str):
            raise ToolRequestError(f"{where}.tool_call_id is required on a tool message", where)
        extra = {"tool_call_id": call_id}
        if isinstance(message.get("name"), str):
            extra["name"] = message["name"]
        return extra
    return {}


def _template_call(call: Mapping[str, Any]) -> dict[str, Any]:
    function = call["function"]
    arguments = function.get("arguments", "{}")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return {
        "id": call.get("id", ""),
        "type": "function",
        "function": {"name": function.get("name", ""), "arguments": arguments},
    }


def tool_parser(chat_template: str | None) -> ToolCallParser:
    """The parser for this model's calls; a 400 when its template cannot show tools."""
    try:
        return parser_for("auto", chat_template)[1]
    except ConfigError as error:
        message = str(error).split(": ", 1)[-1]
        raise ToolRequestError(f"this model cannot take tools: {message}", "tools") from error


def assistant_message(turn: ParsedTurn | None, text: str) -> tuple[dict[str, Any], bool]:
    """The reply message, and whether it calls tools. Calls the parser could not read are
    returned as text (the client sees what the model wrote)."""
    if turn is None or not turn.calls:
        return {"role": "assistant", "content": text}, False
    content = turn.content or None
    if turn.malformed:
        content = text
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [call.openai() for call in turn.calls],
    }, True


def tool_call_deltas(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A message's tool calls as stream deltas, one per call (each complete)."""
    return [
        {"tool_calls": [{"index": index, **call}]}
        for index, call in enumerate(message.get("tool_calls") or ())
    ]
