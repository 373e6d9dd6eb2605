"""load_examples: both row shapes, every validation rule (file, line, field), ids, holdout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openrft.data import check_prompt_lengths, encode_prompt, load_examples, split_holdout
from openrft.errors import DatasetError, RowError

from .helpers import SYSTEM, USER, row, write_jsonl

ASSISTANT = {"role": "assistant", "content": "Yes."}


def msgs(*turns: dict) -> str:
    return json.dumps({"messages": list(turns)})


# (bad line, [expected error fields], a phrase of the first message)
BAD_ROWS = [
    ('{"messages": [', [""], "not valid JSON"),
    ("[1, 2]", [""], "must be a JSON object, got an array"),
    ('"text"', [""], "must be a JSON object, got a string"),
    ('{"reference_answer": "yes"}', ["messages"], "missing"),
    ('{"messages": []}', ["messages"], "non-empty list"),
    ('{"messages": "hi"}', ["messages"], "got a string"),
    ('{"messages": ["hi", {"role": "user", "content": "x"}]}', ["messages[0]"], "object"),
    (msgs(USER, {"role": "robot", "content": "b"}), ["messages[1].role"], "unknown role 'robot'"),
    (msgs(USER, {"content": "b"}), ["messages[1].role"], "missing"),
    (msgs(SYSTEM, {"role": "user"}), ["messages[1].content"], "missing"),
    (msgs({"role": "user", "content": 3}), ["messages[0].content"], "must be a string"),
    (msgs({"role": "user", "content": [{"type": "text"}]}), ["messages[0].content"], "string"),
    (msgs({"role": "user", "content": " \n "}), ["messages[0].content"], "whitespace only"),
    (msgs({"role": "user", "content": ""}), ["messages[0].content"], "empty"),
    (msgs(USER, ASSISTANT), ["messages[-1].role"], "ends with an assistant turn"),
    (msgs(SYSTEM), ["messages"], "no user turn"),
    (msgs(SYSTEM, ASSISTANT), ["messages[-1].role", "messages"], "assistant turn"),
    (row(id=5), ["id"], "non-empty string, got 5"),
    (row(id=""), ["id"], "non-empty string"),
    (row(id=None), ["id"], "got null"),
    (row(metadata={"reference_answer": "no"}), ["reference_answer"], "metadata.reference_answer"),
]


@pytest.mark.parametrize(("line", "fields", "phrase"), BAD_ROWS)
def test_bad_row_names_file_line_and_field(
    tmp_path: Path, line: str, fields: list[str], phrase: str
) -> None:
    # A valid row and a blank line first: the bad row is physical line 3.
    path = write_jsonl(tmp_path / "train.jsonl", [row(id="ok"), "", line])
    with pytest.raises(DatasetError) as info:
        load_examples(path)
    errors = info.value.errors
    assert [(e.file, e.line, e.field) for e in errors] == [(str(path), 3, f) for f in fields]
    assert phrase in errors[0].message


def test_json_error_gives_column(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", ['{"messages": [}'])
    with pytest.raises(DatasetError) as info:
        load_examples(path)
    assert info.value.errors[0].message.endswith("at column 15")


def test_invalid_utf8_is_a_row_error(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(row().encode() + b"\n" + b'{"id": "\xff"}\n')
    with pytest.raises(DatasetError) as info:
        load_examples(path)
    assert [(e.line, e.field) for e in info.value.errors] == [(2, "")]
    assert "UTF-8" in info.value.errors[0].message


def test_all_errors_are_collected(tmp_path: Path) -> None:
    lines = [row(id="a"), "nope", row(id="b"), msgs(USER, ASSISTANT), row(id=7)]
    path = write_jsonl(tmp_path / "a.jsonl", lines)
    with pytest.raises(DatasetError) as info:
        load_examples(path)
    assert [(e.line, e.field) for e in info.value.errors] == [
        (2, ""),
        (4, "messages[-1].role"),
        (5, "id"),
    ]
    assert "3 invalid row(s)" in str(info.value)


def test_duplicate_id_names_the_earlier_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [row(id="x"), row(id="y"), row(id="x")])
    with pytest.raises(DatasetError) as info:
        load_examples(path)
    assert info.value.errors == [
        RowError(str(path), 3, "id", "duplicate id 'x'; first used on line 1")
    ]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.jsonl"
    with pytest.raises(DatasetError) as info:
        load_examples(path)
    assert info.value.errors == [RowError(str(path), 0, "", "file not found")]


def test_flat_row_extra_fields_reach_metadata(tmp_path: Path) -> None:
    line = row(id="r1", label=1, tools=[{"name": "calc"}], reference_answer={"a": [1, 2]})
    path = write_jsonl(tmp_path / "a.jsonl", ["", line])
    [example] = load_examples(path)
    assert example.id == "r1"
    assert example.messages == (SYSTEM, USER)
    assert example.reference_answer == {"a": [1, 2]}
    assert example.metadata == {"label": 1, "tools": [{"name": "calc"}]}
    assert example.source == f"{path}:2"


def test_bedrock_shape_merges_metadata(tmp_path: Path) -> None:
    bedrock = {
        "messages": [USER],
        "metadata": {"reference_answer": 42, "difficulty": "hard"},
        "topic": "math",
    }
    path = write_jsonl(tmp_path / "a.jsonl", [json.dumps(bedrock)])
    [example] = load_examples(path)
    assert example.reference_answer == 42
    assert example.metadata == {"difficulty": "hard", "topic": "math"}


def test_same_reference_answer_in_both_places_is_fine(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [row(metadata={"reference_answer": "yes"})])
    [example] = load_examples(path)
    assert example.reference_answer == "yes"
    assert example.metadata == {}


def test_tool_and_system_roles_are_allowed(tmp_path: Path) -> None:
    # a tool turn answers an assistant's call by its id (tests/data/test_tool_rows.py)
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assistant = {**ASSISTANT, "tool_calls": [call]}
    tool = {"role": "tool", "tool_call_id": "c1", "content": "42"}
    path = write_jsonl(tmp_path / "a.jsonl", [msgs(SYSTEM, USER, assistant, tool)])
    [example] = load_examples(path)
    assert [m["role"] for m in example.messages] == ["system", "user", "assistant", "tool"]


def test_generated_ids_are_stable_and_identical_rows_get_suffixes(tmp_path: Path) -> None:
    lines = [row(), row(reference_answer="no"), row(), row()]
    first = load_examples(write_jsonl(tmp_path / "a.jsonl", lines))
    again = load_examples(write_jsonl(tmp_path / "b.jsonl", lines))
    ids = [e.id for e in first]
    assert ids == [e.id for e in again]
    base = ids[0]
    assert base.startswith("row-") and len(base) == len("row-") + 12
    assert ids[1] != base and not ids[1].startswith(base)
    assert ids[2:] == [f"{base}-2", f"{base}-3"]


def test_generated_id_ignores_key_order_and_shape(tmp_path: Path) -> None:
    flat = {"reference_answer": 1, "messages": [USER], "k": "v"}
    reordered = {"k": "v", "messages": [USER], "reference_answer": 1}
    bedrock = {"messages": [USER], "metadata": {"reference_answer": 1, "k": "v"}}
    ids = [
        load_examples(write_jsonl(tmp_path / f"{i}.jsonl", [json.dumps(r)]))[0].id
        for i, r in enumerate([flat, reordered, bedrock])
    ]
    assert len(set(ids)) == 1


def test_split_holdout_sizes_order_and_determinism() -> None:
    items = list(range(50))
    train, validation = split_holdout(items, 10, seed=3)
    assert len(train) == 40 and len(validation) == 10
    assert train == sorted(train) and validation == sorted(validation)
    assert sorted(train + validation) == items
    assert split_holdout(items, 10, seed=3) == (train, validation)
    assert split_holdout(items, 10, seed=4)[1] != validation


@pytest.mark.parametrize("size", [5, 6, -1])
def test_split_holdout_rejects_bad_sizes(size: int) -> None:
    with pytest.raises(ValueError, match="cannot hold out"):
        split_holdout(list(range(5)), size, seed=0)


def test_check_prompt_lengths_names_each_long_row(tmp_path: Path, tiny_tokenizer) -> None:
    long_user = {"role": "user", "content": "the movie was great " * 40}
    lines = [row(id="short"), msgs(long_user), row(id="short2"), msgs(SYSTEM, long_user)]
    path = write_jsonl(tmp_path / "a.jsonl", lines)
    examples = load_examples(path)
    limit = 60
    assert len(encode_prompt(examples[0].messages, tiny_tokenizer)) <= limit
    check_prompt_lengths(examples[:1], tiny_tokenizer, limit)  # short rows pass
    with pytest.raises(DatasetError) as info:
        check_prompt_lengths(examples, tiny_tokenizer, limit)
    expected = []
    for line, example in [(2, examples[1]), (4, examples[3])]:
        n = len(encode_prompt(example.messages, tiny_tokenizer))
        message = f"prompt is {n} tokens; data.max_prompt_tokens is {limit}"
        expected.append(RowError(str(path), line, "messages", message))
    assert info.value.errors == expected
