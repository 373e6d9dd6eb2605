"""RFT data sets from invocation logs, with Bedrock's request-metadata filters.

    openrft data from-logs LOGS... [--where K=V] [--where-not K=V] [--any K=V] [--filter JSON]
                           [--use-responses] --out FILE

Reads the JSONL logs `openrft serve --log-invocations` writes (openrft.serve.invocations) and
Bedrock model-invocation log records (`input.inputBodyJson` in chat-completions, Converse or
Invoke form, `output.outputBodyJson`, `requestMetadata`). Each served call whose metadata passes
the filter becomes one prompt row; rows with the same prompt are kept once (the first); every
row is checked by the data loader before it is written.

Filters follow Bedrock's `requestMetadataFilters`: exactly one of
- `{"equals": {"k": "v", ...}}`: every pair matches;
- `{"notEquals": {"k": "v", ...}}`: no pair matches (a missing key is not equal);
- `{"andAll": [filter, ...]}`: all of them pass; `{"orAll": [filter, ...]}`: any of them does.
`--use-responses` (Bedrock's `usePromptResponse`) keeps the logged reply as the row's
`reference_answer`; without it a `reference_answer` metadata key, if any, is the reference.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openrft.data.load import validate_line
from openrft.errors import DatasetError, RFTError, RowError

FILTER_KINDS = ("equals", "notEquals", "andAll", "orAll")


class FilterError(RFTError):
    """A metadata filter that is not Bedrock's shape (names the offending part)."""


@dataclass(frozen=True)
class Invocation:
    """One logged call, whatever log it came from."""

    source: str  # "file:line"
    messages: list[dict[str, str]]  # the prompt as the caller sent it
    response: str | None  # the first reply's text; None when the call failed
    metadata: dict[str, str]  # requestMetadata
    model: str = ""


@dataclass
class FromLogsReport:
    """What happened to every record read."""

    read: int = 0
    written: int = 0
    duplicates: int = 0
    filtered_out: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first source with it

    def skip(self, reason: str, source: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, source)

    def lines(self) -> list[str]:
        out = [
            f"records read: {self.read}",
            f"rows written: {self.written}",
            f"left out by the filter: {self.filtered_out}",
            f"duplicate prompts dropped: {self.duplicates}",
        ]
        out += [f"skipped, {r}: {n} (first at {self.examples[r]})" for r, n in self.skipped.items()]
        return out


# --- filters -----------------------------------------------------------------------------------


def check_filter(spec: Any, where: str = "filter") -> None:
    """Raises FilterError naming the part of `spec` that is not a Bedrock metadata filter."""
    if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in FILTER_KINDS:
        raise FilterError(
            f"{where}: must be an object with exactly one of {', '.join(FILTER_KINDS)}"
        )
    kind, value = next(iter(spec.items()))
    if kind in ("equals", "notEquals"):
        if not isinstance(value, Mapping) or not value:
            raise FilterError(f"{where}.{kind}: must be a non-empty object of key: value")
        for key, text in value.items():
            if not isinstance(text, str):
                raise FilterError(f"{where}.{kind}.{key}: must be a string, got {text!r}")
    else:
        if not isinstance(value, list) or not value:
            raise FilterError(f"{where}.{kind}: must be a non-empty list of filters")
        for i, part in enumerate(value):
            check_filter(part, f"{where}.{kind}[{i}]")


def matches(spec: Mapping[str, Any] | None, metadata: Mapping[str, Any]) -> bool:
    """Whether `metadata` passes the filter `spec` (None passes everything)."""
    if spec is None:
        return True
    kind, value = next(iter(spec.items()))
    if kind == "equals":
        return all(metadata.get(k) == v for k, v in value.items())
    if kind == "notEquals":
        return all(metadata.get(k) != v for k, v in value.items())
    if kind == "andAll":
        return all(matches(part, metadata) for part in value)
    return any(matches(part, metadata) for part in value)


def filter_from_flags(
    where: Iterable[str] = (), where_not: Iterable[str] = (), any_of: Iterable[str] = ()
) -> dict[str, Any] | None:
    """The filter of the CLI's flags: all --where pairs, no --where-not pair, and (when given)
    at least one --any pair."""
    parts: list[dict[str, Any]] = []
    equals = dict(_pair(p, "--where") for p in where)
    not_equals = dict(_pair(p, "--where-not") for p in where_not)
    alternatives = [{"equals": dict([_pair(p, "--any")])} for p in any_of]
    if equals:
        parts.append({"equals": equals})
    if not_equals:
        parts.append({"notEquals": not_equals})
    if alternatives:
        parts.append({"orAll": alternatives})
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"andAll": parts}


def _pair(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise FilterError(f"{flag} takes KEY=VALUE, got {text!r}")
    return key, value


# --- reading logs ------------------------------------------------------------------------------


def read_invocations(paths: Iterable[str | Path], report: FromLogsReport) -> Iterator[Invocation]:
    """Every record of the log files, normalised; unreadable ones are counted in `report`."""
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise RFTError(f"{path}: no such log file")
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                report.read += 1
                source = f"{path}:{number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    report.skip(f"not JSON ({exc.msg})", source)
                    continue
                invocation = normalise(record, source)
                if isinstance(invocation, str):
                    report.skip(invocation, source)
                else:
                    yield invocation


def normalise(record: Any, source: str) -> Invocation | str:
    """An openrft or Bedrock log record as an Invocation, or the reason it cannot be one."""
    if not isinstance(record, Mapping):
        return "not a JSON object"
    metadata = record.get("requestMetadata") or {}
    if not isinstance(metadata, Mapping):
        return "requestMetadata is not an object"
    if "request" in record:  # openrft.serve.invocations
        request = record.get("request") or {}
        messages = request.get("messages") if isinstance(request, Mapping) else None
        response = _openai_reply(record.get("response"))
    elif isinstance(record.get("input"), Mapping):  # Bedrock ModelInvocationLog
        body = record["input"].get("inputBodyJson") or {}
        messages = _bedrock_messages(body) if isinstance(body, Mapping) else None
        output = record.get("output") or {}
        reply = output.get("outputBodyJson") if isinstance(output, Mapping) else None
        response = _openai_reply(reply) or _converse_reply(reply)
    else:
        return "neither an openrft nor a Bedrock invocation record"
    if not isinstance(messages, list) or not messages:
        return "no request messages"
    texts = [_as_chat(m) for m in messages]
    if any(t is None for t in texts):
        return "a message is not text"
    model = str(record.get("model") or record.get("modelId") or "")
    return Invocation(source, texts, response, dict(metadata), model)  # type: ignore[arg-type]


def _as_chat(message: Any) -> dict[str, str] | None:
    """A message in chat-completions form: text content parts (OpenAI's or Converse's) joined."""
    if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
        return None
    content = message.get("content")
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, Mapping)]
        if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
            return None
        content = "".join(parts)
    if not isinstance(content, str):
        return None
    role = "system" if message["role"] == "developer" else message["role"]
    return {"role": role, "content": content}


def _bedrock_messages(body: Mapping[str, Any]) -> list[Any] | None:
    """Converse and Nova Invoke bodies keep the system prompt beside the messages."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    system = body.get("system")
    if isinstance(system, list) and system:
        texts = [s.get("text") for s in system if isinstance(s, Mapping)]
        if all(isinstance(t, str) for t in texts):
            return [{"role": "system", "content": "".join(texts)}, *messages]
    if isinstance(system, str) and system:
        return [{"role": "system", "content": system}, *messages]
    return messages


def _openai_reply(reply: Any) -> str | None:
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


def _converse_reply(reply: Any) -> str | None:
    try:
        parts = reply["output"]["message"]["content"]
        texts = [p["text"] for p in parts if "text" in p]
    except (KeyError, TypeError):
        return None
    return "".join(texts) if texts else None


# --- building the data set ---------------------------------------------------------------------


def rows_from_logs(
    paths: Iterable[str | Path],
    spec: Mapping[str, Any] | None = None,
    use_responses: bool = False,
) -> tuple[list[dict[str, Any]], FromLogsReport]:
    """The data set's rows (validated, de-duplicated) and the report of what was left out."""
    if spec is not None:
        check_filter(spec)
    report = FromLogsReport()
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for invocation in read_invocations(paths, report):
        if not matches(spec, invocation.metadata):
            report.filtered_out += 1
            continue
        if invocation.response is None:
            report.skip("the call failed or has no reply", invocation.source)
            continue
        messages = list(invocation.messages)
        while messages and messages[-1]["role"] == "assistant":  # a prefill is not the prompt
            messages.pop()
        key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        if key in seen:
            report.duplicates += 1
            continue
        row = _row(invocation, messages, use_responses, key)
        example, errors = validate_line(json.dumps(row), invocation.source, 0)
        if example is None:
            report.skip(
                f"invalid prompt ({errors[0].field}: {errors[0].message})", invocation.source
            )
            continue
        seen.add(key)
        rows.append(row)
    report.written = len(rows)
    return rows, report


def _row(
    invocation: Invocation, messages: list[dict[str, str]], use_responses: bool, key: str
) -> dict[str, Any]:
    metadata = {k: v for k, v in invocation.metadata.items() if k not in ("id", "messages")}
    row: dict[str, Any] = {"id": "log-" + hashlib.sha256(key.encode()).hexdigest()[:16]}
    row["messages"] = messages
    if use_responses:
        metadata.pop("reference_answer", None)
        row["reference_answer"] = invocation.response
    elif "reference_answer" in metadata:
        row["reference_answer"] = metadata.pop("reference_answer")
    row["metadata"] = {**metadata, "source_log": invocation.source}
    if invocation.model:
        row["metadata"]["logged_model"] = invocation.model
    return row


def write_rows(rows: list[dict[str, Any]], out: str | Path) -> Path:
    """Writes the rows as JSONL (atomically); refuses an empty data set."""
    out = Path(out)
    if not rows:
        raise DatasetError([RowError(str(out), 0, "", "no log record passed the filter")])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return out
