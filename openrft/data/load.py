"""Reading and validating prompt data sets (JSONL, OpenAI chat format, flat or Bedrock shape).

Owns the per-line validator (shared with `summary.py`), id assignment, the seeded held-out
split and the prompt-length check. Every problem is collected as a `RowError` naming file,
line and field; `load_examples` raises them all at once as one `DatasetError`.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

from openrft.data.render import encode_prompt
from openrft.data.tool_rows import has_tool_calls, tool_schema_problems, tool_turn_problems
from openrft.errors import DatasetError, RowError
from openrft.types import Example, Message

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
_RESERVED = ("messages", "reference_answer", "id", "metadata")
MAX_DEPTH = 100  # levels of arrays and objects in one row
T = TypeVar("T")


class FileCheck(NamedTuple):
    """What validating a whole file found: the valid rows, every error, the non-blank rows."""

    examples: list[Example]
    errors: list[RowError]
    rows: int


def load_examples(path: str | Path) -> list[Example]:
    """Every row of a JSONL file as an `Example`; raises `DatasetError` listing all bad rows."""
    check = validate_file(path)
    if check.errors:
        raise DatasetError(check.errors)
    return check.examples


def validate_file(path: str | Path) -> FileCheck:
    """Validate every line of `path`; never raises for bad rows, only reports them."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return FileCheck([], [RowError(file, 0, "", "file not found")], 0)
    except OSError as exc:
        return FileCheck([], [RowError(file, 0, "", f"cannot read file: {exc}")], 0)
    examples: list[Example] = []
    errors: list[RowError] = []
    rows = 0
    # Split on b"\n" only: str.splitlines would also break inside JSON strings at U+2028 etc.
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            rows += 1
            errors.append(RowError(file, number, "", f"not valid UTF-8 (byte {exc.start})"))
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")  # editors on Windows add a byte-order mark
        if not text.strip():
            continue
        rows += 1
        example, row_errors = validate_line(text, file, number)
        errors.extend(row_errors)
        if example is not None:
            examples.append(example)
    examples, id_errors = assign_ids(examples)
    errors.extend(id_errors)
    errors.sort(key=lambda e: e.line)
    return FileCheck(examples, errors, rows)


def validate_line(text: str, file: str, line: int) -> tuple[Example | None, list[RowError]]:
    """One JSONL line as an `Example` (None when it has errors) and every problem found in it."""

    def error(field: str, message: str) -> RowError:
        return RowError(file, line, field, message)

    row, problem = parse_row(text)
    if row is None:
        return None, [error("", problem)]
    errors = [error(f, m) for f, m in _message_problems(row)]
    if isinstance(row.get("messages"), list):
        errors += [error(f, m) for f, m in tool_turn_problems(row["messages"])]
    if "tools" in row:
        errors += [error(f, m) for f, m in tool_schema_problems(row["tools"])]
    errors += [error(f, m) for f, m in _id_problems(row)]
    metadata, reference, merge_problems = _merge_fields(row)
    errors += [error(f, m) for f, m in merge_problems]
    if errors:
        return None, errors
    example = Example(
        id=row.get("id", ""),
        messages=tuple(cast(Message, m) for m in row["messages"]),
        reference_answer=reference,
        metadata=metadata,
        source=f"{file}:{line}",
    )
    if "id" not in row:
        example = replace(example, id=content_id(example))
    return example, []


def parse_row(text: str) -> tuple[dict[str, Any] | None, str]:
    """(row, "") for a JSONL line holding a JSON object, else (None, what is wrong with it).
    Nesting deeper than MAX_DEPTH is refused: no row needs it, and walking it (the tool
    schema check, the content id) would exhaust Python's stack."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} at column {exc.colno}"
    except RecursionError:
        return None, f"not usable JSON: nests deeper than {MAX_DEPTH} levels"
    if not isinstance(row, dict):
        return None, f"a row must be a JSON object, got {_json_type(row)}"
    if _nests_deeper(row, MAX_DEPTH):
        return None, f"not usable JSON: nests deeper than {MAX_DEPTH} levels"
    return row, ""


def _nests_deeper(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels (without recursing)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, dict | list):
            continue
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)
    return False


def message_list_problems(row: dict[str, Any]) -> tuple[list[tuple[str, str]], list[Any]]:
    """(problems, messages) for a row's `messages`: present, a non-empty list, each turn an
    object with a known role and text content. `messages` is empty when there is no list to
    check further. Shared by the RL and SFT row validators."""
    if "messages" not in row:
        return [("messages", "missing; every row needs a list of chat messages")], []
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        got = _json_type(messages) if not isinstance(messages, list) else "an empty list"
        return [("messages", f"must be a non-empty list of messages, got {got}")], []
    problems: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        problems += _turn_problems(f"messages[{i}]", message)
    return problems, messages


def _message_problems(row: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, message) for everything wrong with `messages` and its turns."""
    problems, messages = message_list_problems(row)
    if not messages:
        return problems
    last = messages[-1]
    if isinstance(last, dict) and last.get("role") == "assistant":
        problems.append(
            (
                "messages[-1].role",
                "the prompt ends with an assistant turn; the last message must be a system, "
                "user or tool turn, because the model writes the assistant turn",
            )
        )
    if not any(isinstance(m, dict) and m.get("role") == "user" for m in messages):
        problems.append(("messages", "has no user turn; a prompt needs at least one"))
    return problems


def _turn_problems(field: str, message: Any) -> list[tuple[str, str]]:
    """(field, message) for one chat turn: an object with a known role and text content."""
    if not isinstance(message, dict):
        return [(field, f"must be an object with role and content, got {_json_type(message)}")]
    problems: list[tuple[str, str]] = []
    role = message.get("role")
    if "role" not in message:
        problems.append((f"{field}.role", "missing"))
    elif role not in ROLES:
        problems.append((f"{field}.role", f"unknown role {role!r}; allowed: {', '.join(ROLES)}"))
    content = message.get("content")
    if has_tool_calls(message) and not content:
        return problems  # an assistant turn of tool calls alone has no text
    if "content" not in message:
        problems.append((f"{field}.content", "missing"))
    elif not isinstance(content, str):
        got = _json_type(content)
        problems.append((f"{field}.content", f"must be a string (text only), got {got}"))
    elif not content.strip():
        problems.append((f"{field}.content", "is empty or whitespace only"))
    return problems


def _id_problems(row: dict[str, Any]) -> list[tuple[str, str]]:
    if "id" in row and (not isinstance(row["id"], str) or not row["id"].strip()):
        return [("id", f"must be a non-empty string, got {json.dumps(row['id'])}")]
    return []


def _merge_fields(row: dict[str, Any]) -> tuple[dict[str, Any], Any, list[tuple[str, str]]]:
    """(metadata, reference_answer, problems): every extra field, Bedrock `metadata` merged in."""
    metadata = {k: v for k, v in row.items() if k not in _RESERVED}
    reference = row.get("reference_answer")
    nested = row.get("metadata")
    if not isinstance(nested, dict):
        # Not Bedrock's shape: a non-object `metadata` is just another extra field.
        if "metadata" in row:
            metadata["metadata"] = nested
        return metadata, reference, []
    problems: list[tuple[str, str]] = []
    for key, value in nested.items():
        if key in row and key != "metadata":
            # The same field in both places is fine only when both say the same thing.
            if row[key] != value:
                problems.append((key, f"differs from metadata.{key}; give it in one place only"))
        elif key == "reference_answer":
            reference = value
        else:
            metadata[key] = value
    return metadata, reference, problems


def content_id(example: Example) -> str:
    """A stable id for a row without one: hash of its canonical JSON (metadata flattened)."""
    row: dict[str, Any] = {**example.metadata, "messages": [dict(m) for m in example.messages]}
    if example.reference_answer is not None:
        row["reference_answer"] = example.reference_answer
    canonical = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "row-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def assign_ids(examples: list[Example]) -> tuple[list[Example], list[RowError]]:
    """Suffix repeated generated ids ("-2", "-3"); a repeated explicit id is an error."""
    first_line: dict[str, int] = {}
    kept: list[Example] = []
    errors: list[RowError] = []
    for example in examples:
        file, line = source_location(example.source)
        if example.id == content_id(example):
            # Identical rows hash alike; suffixes keep them apart without touching the data.
            base, n, new_id = example.id, 2, example.id
            while new_id in first_line:
                new_id, n = f"{base}-{n}", n + 1
            example = replace(example, id=new_id)
        elif example.id in first_line:
            message = f"duplicate id {example.id!r}; first used on line {first_line[example.id]}"
            errors.append(RowError(file, line, "id", message))
            continue
        first_line[example.id] = line
        kept.append(example)
    return kept, errors


def source_location(source: str) -> tuple[str, int]:
    """Split an `Example.source` ("path:line") into (path, line); line 0 when there is none."""
    file, sep, line = source.rpartition(":")
    if sep and line.isdigit():
        return file, int(line)
    return source, 0


def split_holdout(examples: Sequence[T], size: int, seed: int) -> tuple[list[T], list[T]]:
    """(train, validation): `size` rows picked by a seeded shuffle; both keep the file order."""
    if size < 0 or size >= len(examples):
        raise ValueError(
            f"cannot hold out {size} validation rows from {len(examples)} rows: the size must be "
            f"at least 0 and less than the number of rows (lower data.validation_size or add rows)"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:size])
    train = [e for i, e in enumerate(examples) if i not in held]
    validation = [e for i, e in enumerate(examples) if i in held]
    return train, validation


def check_prompt_lengths(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    max_prompt_tokens: int,
    chat_template: str = "model",
) -> None:
    """Raise `DatasetError` naming every row whose rendered prompt exceeds the token limit."""
    errors: list[RowError] = []
    for example in examples:
        n = len(encode_prompt(example.messages, tokenizer, chat_template))
        if n > max_prompt_tokens:
            file, line = source_location(example.source)
            message = f"prompt is {n} tokens; data.max_prompt_tokens is {max_prompt_tokens}"
            errors.append(RowError(file, line, "messages", message))
    if errors:
        raise DatasetError(errors)


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"
