"""Fuzzing the dataset loaders (openrft.data.load, openrft.data.sft_data): for any file, the
loader returns rows or raises DatasetError, and every error names the file and a line of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import example as case
from hypothesis import given
from hypothesis import strategies as st

from openrft.data.load import load_examples, validate_file
from openrft.data.sft_data import load_conversations
from openrft.errors import DatasetError, RowError

from ._fuzz import deep_values, fuzz, json_text, junk, mutated, texts

ROLES = ("system", "user", "assistant", "tool", "developer", "")
ROW_KEYS = ("messages", "reference_answer", "id", "metadata", "tools", "role", "content",
            "tool_calls", "tool_call_id", "weight", "function", "arguments", "parameters",
            "name", "type")  # fmt: skip

TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "adds",
        "parameters": {"type": "object", "properties": {"a": {"type": "number"}}},
    },
}
CALL = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
RL_ROWS = [
    {"messages": [{"role": "user", "content": "2+2?"}], "reference_answer": "4"},
    {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "add 1"},
            {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": "1"},
        ],
        "tools": [TOOL],
        "id": "r2",
        "metadata": {"reference_answer": {"value": 1}, "topic": "math"},
    },
]
SFT_ROWS = [
    {
        "messages": [
            {"role": "user", "content": "a charming film"},
            {"role": "assistant", "content": "positive", "weight": 1},
        ],
        "id": "s1",
    },
    {
        "messages": [
            {"role": "system", "content": "label it"},
            {"role": "user", "content": "dull"},
            {"role": "assistant", "content": "negative", "weight": 0},
            {"role": "user", "content": "sure?"},
            {"role": "assistant", "content": "negative"},
        ]
    },
]

# A line is a mutated valid row, any JSON value, or raw text (deep nesting, broken JSON).
row_values = st.one_of(
    st.sampled_from(RL_ROWS + SFT_ROWS).flatmap(lambda row: mutated(row, ROW_KEYS)),
    junk,
)
raw_lines = st.one_of(
    row_values.map(json_text),
    deep_values.map(json_text),
    texts,
    st.sampled_from(('{"messages": [', "[1, 2]", '"text"', "{}", "NaN", "\ufeff{}")),
)
line_bytes = st.one_of(
    raw_lines.map(lambda line: line.encode("utf-8", "surrogatepass")),
    st.binary(max_size=40),
)
files = st.lists(line_bytes, min_size=0, max_size=6).map(b"\n".join)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-data") / "rows.jsonl"


def _check_errors(errors: list[RowError], path: Path, content: bytes) -> None:
    lines = content.count(b"\n") + 1
    assert errors
    for error in errors:
        assert isinstance(error, RowError)
        assert error.file == str(path)
        assert 0 <= error.line <= lines, error
        assert str(error).startswith(f"{path}:{error.line}: "), error


# Found by CI's run (a tool whose name is a list: TypeError: unhashable type), kept as a case.
LIST_TOOL_NAME = json.dumps(
    {
        "messages": [{"role": "user", "content": "add 1"}],
        "tools": [{"type": "function", "function": {"name": [], "parameters": {}}}],
    }
).encode()


@fuzz(500)
@given(content=files)
@case(content=LIST_TOOL_NAME)
def test_rl_loader_reports_every_bad_row(data_file: Path, content: bytes) -> None:
    data_file.write_bytes(content)
    check = validate_file(data_file)  # never raises for bad rows
    try:
        examples = load_examples(data_file)
    except DatasetError as exc:
        _check_errors(exc.errors, data_file, content)
        assert check.errors == exc.errors
        return
    assert not check.errors
    for example in examples:
        assert example.source.startswith(f"{data_file}:")
        assert example.id and example.messages
    assert len({e.id for e in examples}) == len(examples)


@fuzz(500)
@given(content=files, from_reference=st.booleans())
def test_sft_loader_reports_every_bad_row(
    data_file: Path, content: bytes, from_reference: bool
) -> None:
    data_file.write_bytes(content)
    try:
        conversations = load_conversations(data_file, from_reference=from_reference)
    except DatasetError as exc:
        _check_errors(exc.errors, data_file, content)
        return
    for conversation in conversations:
        assert conversation.source.startswith(f"{data_file}:")
        assert conversation.messages[-1]["role"] == "assistant"
        assert conversation.trained_turns


@fuzz(50)
@given(picked=st.lists(st.sampled_from(range(4)), min_size=1, max_size=4, unique=True))
def test_valid_rows_load(data_file: Path, picked: list[int]) -> None:
    """The unmutated rows load (the fuzzing above starts from inputs that are valid)."""
    rows = [(RL_ROWS + SFT_ROWS)[i] for i in picked]
    data_file.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    rl = [row for row in rows if row["messages"][-1]["role"] != "assistant"]
    if len(rl) == len(rows):
        assert len(load_examples(data_file)) == len(rows)
    if not rl:
        assert len(load_conversations(data_file)) == len(rows)
