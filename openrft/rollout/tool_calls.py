"""Tool calls in a model's own words: a registry of parsers from sampled assistant text to
OpenAI-shaped `tool_calls`, and the choice of parser from a model's chat template.

- `hermes`: Qwen2.5 / Hermes / many fine-tunes write `<tool_call>{"name": ..., "arguments":
  {...}}</tool_call>`, one block per call, anywhere in the turn; a turn that is nothing but
  such JSON objects, one per line (the tags left out, as small models often do), is calls too.
- `llama3_json`: Llama 3.1+ write the call as the whole turn, a JSON object `{"name": ...,
  "parameters": {...}}` (optionally after `<|python_tag|>`; several separated by `;`).

A call the parser cannot read (broken JSON, no name) is not dropped: it is returned as a
`MalformedCall` so the environment can answer it with an error, as a real API would.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from openrft.errors import ConfigError

_call_ids = itertools.count()


@dataclass(frozen=True)
class ToolCall:
    """One well-formed call: a tool name and its arguments (a JSON object)."""

    id: str  # "call_<n>", unique within the process; tool results answer it by this id
    name: str
    arguments: dict[str, Any]

    def openai(self) -> dict[str, Any]:
        """The call as an OpenAI assistant message lists it (arguments as a JSON string)."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments)},
        }


@dataclass(frozen=True)
class MalformedCall:
    """A call the model tried to write but the parser could not read."""

    text: str  # what the model wrote for it
    problem: str  # why it could not be read


@dataclass(frozen=True)
class ParsedTurn:
    """An assistant turn split into its text and its calls."""

    content: str  # the text outside the calls, stripped
    calls: tuple[ToolCall, ...] = ()
    malformed: tuple[MalformedCall, ...] = ()

    @property
    def wants_tools(self) -> bool:
        return bool(self.calls or self.malformed)

    def message(self) -> dict[str, Any]:
        """The turn as an OpenAI assistant message (`tool_calls` only where there are some)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.calls:
            message["tool_calls"] = [call.openai() for call in self.calls]
        return message


class ToolCallParser(Protocol):
    def __call__(self, text: str) -> ParsedTurn: ...


def new_call_id() -> str:
    return f"call_{next(_call_ids)}"


def _read_call(body: str, argument_keys: tuple[str, ...]) -> ToolCall | MalformedCall:
    """A call from its JSON body: {"name": str, <argument key>: object or JSON string}."""
    try:
        value = json.loads(body)
    except json.JSONDecodeError as error:
        return MalformedCall(body, f"not valid JSON ({error.msg} at character {error.pos})")
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return MalformedCall(body, 'a call must be a JSON object with a "name" string')
    arguments: Any = {}
    for key in argument_keys:
        if key in value:
            arguments = value[key]
            break
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as error:
            return MalformedCall(body, f"arguments are not valid JSON ({error.msg})")
    if not isinstance(arguments, dict):
        return MalformedCall(body, "arguments must be a JSON object")
    return ToolCall(new_call_id(), value["name"], arguments)


_HERMES_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)


def parse_hermes(text: str) -> ParsedTurn:
    """`<tool_call>{json}</tool_call>` blocks (an unclosed last block runs to the end)."""
    calls: list[ToolCall] = []
    malformed: list[MalformedCall] = []
    for match in _HERMES_BLOCK.finditer(text):
        call = _read_call(match.group(1).strip(), ("arguments", "parameters"))
        (calls if isinstance(call, ToolCall) else malformed).append(call)  # type: ignore[arg-type]
    content = _HERMES_BLOCK.sub("", text).strip()
    if not calls and not malformed:
        bare = _bare_calls(content)
        if bare:
            return ParsedTurn("", bare)
    return ParsedTurn(content, tuple(calls), tuple(malformed))


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def _bare_calls(text: str) -> tuple[ToolCall, ...]:
    """A turn that is nothing but calls' JSON ({"name": ..., "arguments": {...}}, one per
    line, maybe in a ```json fence) without the <tool_call> tags: small models drop the tags
    often (half of Qwen2.5-Coder-0.5B's first calls, several calls as JSON lines), and the
    intent is unambiguous. Empty unless every line is such a call."""
    fenced = _FENCE.match(text)
    body = fenced.group(1) if fenced else text
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    calls = []
    for line in lines or [""]:
        if not (line.startswith("{") and line.endswith("}")):
            return ()
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            return ()
        if not isinstance(value, dict) or set(value) != {"name", "arguments"}:
            return ()
        call = _read_call(line, ("arguments",))
        if not isinstance(call, ToolCall):
            return ()
        calls.append(call)
    return tuple(calls)


def parse_llama3_json(text: str) -> ParsedTurn:
    """A turn that is one JSON call, or several separated by ';' (Llama 3.1+ JSON calling)."""
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith("{"):
        return ParsedTurn(text.strip())
    calls: list[ToolCall] = []
    malformed: list[MalformedCall] = []
    decoder = json.JSONDecoder()
    position = 0
    while position < len(body):
        try:
            _, end = decoder.raw_decode(body, position)
        except json.JSONDecodeError:
            end = len(body)  # the rest is one broken call
        call = _read_call(body[position:end], ("parameters", "arguments"))
        (calls if isinstance(call, ToolCall) else malformed).append(call)  # type: ignore[arg-type]
        position = end
        while position < len(body) and body[position] in "; \n\t":
            position += 1
    return ParsedTurn("", tuple(calls), tuple(malformed))


TOOL_CALL_PARSERS: dict[str, ToolCallParser] = {
    "hermes": parse_hermes,
    "llama3_json": parse_llama3_json,
}


def parser_for(name: str, chat_template: str | None) -> tuple[str, ToolCallParser]:
    """The parser `name` names, or for "auto" the one the chat template's own tool format
    implies. A template that never mentions tools cannot show the model its tools: a
    ConfigError at job start, not a run that silently never calls one."""
    template = chat_template or ""
    if name == "auto":
        if "tools" not in template:
            raise ConfigError(
                "env.tool_parser",
                "the model's chat template has no tool support (it never renders `tools`), so "
                "the model would never see its tools; use a model whose template has them "
                "(e.g. qwen2.5-coder-0.5b-instruct) or an environment without tools",
            )
        if "<tool_call>" in template:
            name = "hermes"
        elif "<|python_tag|>" in template or '"parameters"' in template:
            name = "llama3_json"
        else:
            choices = ", ".join(TOOL_CALL_PARSERS)
            raise ConfigError(
                "env.tool_parser",
                f"cannot tell the model's tool-call format from its chat template; set one of "
                f"{choices}",
            )
    if name not in TOOL_CALL_PARSERS:
        choices = ", ".join(["auto", *TOOL_CALL_PARSERS])
        raise ConfigError("env.tool_parser", f"unknown parser {name!r}; use one of {choices}")
    return name, TOOL_CALL_PARSERS[name]
