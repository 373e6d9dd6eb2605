"""OpenAI grader templates: `{{ sample.output_text }}`, `{{ sample.output_json.FIELD }}`,
`{{ item.FIELD.SUBFIELD }}`. Paths walk dicts by key and lists by index; strings render as
they are, other JSON values as JSON. A path that does not resolve is a TemplateError."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from openrft.types import Sample

PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
NAMESPACES = ("sample", "item")
_INDEX = re.compile(r"-?[0-9]{1,18}", re.ASCII)  # a list index in a path: item.messages.-1


class TemplateError(ValueError):
    pass


def openai_sample(sample: Sample) -> dict[str, Any]:
    """The `sample` namespace as OpenAI graders see it."""
    text = sample.response
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested too deeply for json to read
        parsed = None
    return {
        "output_text": text,
        "output_json": parsed,
        "output_tools": sample.tool_calls,
        "choices": [{"index": 0, "message": _last_assistant(sample)}],
    }


def _last_assistant(sample: Sample) -> dict[str, Any]:
    for message in reversed(sample.messages):
        if message["role"] == "assistant":
            return dict(message)
    return {"role": "assistant", "content": sample.response}


def template_paths(template: str) -> list[str]:
    """The placeholders of a template; raises TemplateError for malformed ones (for validation)."""
    paths = [m.group(1) for m in PLACEHOLDER.finditer(template)]
    leftover = PLACEHOLDER.sub("", template)
    if "{{" in leftover or "}}" in leftover:
        raise TemplateError(f"unbalanced '{{{{' or '}}}}' in template {template!r:.80}")
    for path in paths:
        head = path.split(".")[0]
        if head not in NAMESPACES or not re.fullmatch(r"[\w.\-]+", path):
            raise TemplateError(f"'{{{{ {path} }}}}': placeholders start with sample. or item.")
    return paths


def resolve(path: str, namespaces: dict[str, Any]) -> Any:
    head, *rest = path.split(".")
    value = namespaces[head]
    for part in rest:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and -len(value) <= _index(part) < len(value):
            value = value[_index(part)]
        else:
            raise TemplateError(f"'{{{{ {path} }}}}': no '{part}' in {head}")
    if path == "item.reference_answer" and value is None:
        # Every item has the key; None means the row has none: an error, not the text "null".
        raise TemplateError(f"'{{{{ {path} }}}}': the row has no reference answer")
    return value


def _index(part: str) -> float:
    """A path part as a list index; inf (out of every list's range) when it is not one.
    ASCII digits only: str.isdigit also accepts "²", which int() refuses."""
    return int(part) if _INDEX.fullmatch(part) else math.inf


def render(template: str, sample: dict[str, Any], item: dict[str, Any]) -> str:
    namespaces = {"sample": sample, "item": item}

    def substitute(match: re.Match[str]) -> str:
        value = resolve(match.group(1), namespaces)
        if isinstance(value, str):
            return value
        try:
            return json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError) as exc:
            problem = "nests too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise TemplateError(
                f"'{{{{ {match.group(1)} }}}}': cannot write as JSON: {problem}"
            ) from None

    template_paths(template)
    return PLACEHOLDER.sub(substitute, template)
