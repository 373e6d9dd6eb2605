"""SFT data: row validation (file, line, field), --from-reference rows, and the assistant-token
loss mask, checked by decoding exactly the masked tokens."""

from __future__ import annotations

import json

import pytest
from tiny_model import build_tiny_tokenizer

from openrft.data.sft_data import (
    Conversation,
    encode_conversation,
    load_conversations,
    tokenize_conversations,
)
from openrft.errors import ConfigError, DatasetError

from .helpers import SYSTEM, USER, write_jsonl

ASSISTANT = {"role": "assistant", "content": "Yes, it is."}


def conversation(*turns: dict, **fields) -> str:
    return json.dumps({"messages": list(turns), **fields})


def masked_text(tokenizer, row) -> str:
    return tokenizer.decode([t for t, m in zip(row.input_ids, row.loss_mask, strict=True) if m])


# --- loading and validation ------------------------------------------------------------------


def test_valid_rows_load_with_ids_and_sources(tmp_path):
    path = write_jsonl(
        tmp_path / "sft.jsonl",
        [conversation(SYSTEM, USER, ASSISTANT, id="a"), "", conversation(USER, ASSISTANT)],
    )
    rows = load_conversations(path)
    assert [r.id for r in rows][0] == "a"
    assert rows[1].id.startswith("row-")
    assert rows[1].source == f"{path}:3"
    assert rows[0].messages[-1] == ASSISTANT
    assert rows[0].trained_turns == (2,)


def test_several_assistant_turns_and_weight_zero(tmp_path):
    turns = [USER, {**ASSISTANT, "weight": 0}, USER, ASSISTANT]
    rows = load_conversations(write_jsonl(tmp_path / "a.jsonl", [conversation(*turns)]))
    assert rows[0].trained_turns == (3,)
    assert "weight" not in rows[0].messages[1]


BAD_ROWS = [
    ('{"messages": [', "", "not valid JSON"),
    ("[1]", "", "must be a JSON object"),
    ('{"id": "x"}', "messages", "missing"),
    ('{"messages": []}', "messages", "non-empty list"),
    (conversation(USER), "messages[-1].role", "--from-reference"),
    (conversation(USER, {"role": "bot", "content": "hi"}), "messages[1].role", "unknown role"),
    (conversation(USER, {"role": "assistant", "content": " "}), "messages[1].content", "empty"),
    (conversation(USER, {"role": "assistant", "content": 3}), "messages[1].content", "string"),
    (conversation(SYSTEM, ASSISTANT), "messages", "no user turn"),
    (conversation(USER, {**ASSISTANT, "weight": 0}), "messages", "weight 0"),
    (conversation(USER, {**ASSISTANT, "weight": 2}), "messages[1].weight", "0 or 1"),
    (conversation({**USER, "weight": 1}, ASSISTANT), "messages[0].weight", "assistant turns"),
    (conversation(USER, ASSISTANT, id=""), "id", "non-empty string"),
]


@pytest.mark.parametrize(("line", "field", "fragment"), BAD_ROWS)
def test_bad_rows_are_named_by_file_line_and_field(tmp_path, line, field, fragment):
    path = write_jsonl(tmp_path / "bad.jsonl", [conversation(USER, ASSISTANT), line])
    with pytest.raises(DatasetError) as info:
        load_conversations(path)
    error = info.value.errors[0]
    assert (error.file, error.line, error.field) == (str(path), 2, field)
    assert fragment in error.message
    assert f"bad.jsonl:2: {field + ': ' if field else ''}" in str(info.value)


def test_every_bad_row_is_reported_at_once(tmp_path):
    lines = [conversation(USER), conversation(USER, ASSISTANT, id="d"), "{", "[]"]
    lines.append(conversation(USER, ASSISTANT, id="d"))
    with pytest.raises(DatasetError) as info:
        load_conversations(write_jsonl(tmp_path / "x.jsonl", lines))
    assert [(e.line, e.field) for e in info.value.errors] == [
        (1, "messages[-1].role"), (3, ""), (4, ""), (5, "id"),
    ]  # fmt: skip


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DatasetError, match="file not found"):
        load_conversations(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="empty"):
        load_conversations(write_jsonl(tmp_path / "empty.jsonl", [""]))


def test_from_reference_turns_rl_rows_into_conversations(tmp_path):
    rl_row = json.dumps({"messages": [SYSTEM, USER], "reference_answer": "positive", "id": "r"})
    rows = load_conversations(write_jsonl(tmp_path / "rl.jsonl", [rl_row]), from_reference=True)
    assert rows[0].messages == (SYSTEM, USER, {"role": "assistant", "content": "positive"})
    assert rows[0].trained_turns == (2,)
    assert rows[0].id == "r"


@pytest.mark.parametrize(
    ("row", "field", "fragment"),
    [
        ({"messages": [USER]}, "reference_answer", "missing"),
        ({"messages": [USER], "reference_answer": 42}, "reference_answer", "int"),
        ({"messages": [USER], "reference_answer": " "}, "reference_answer", "non-empty"),
        ({"messages": [USER, ASSISTANT], "reference_answer": "x"}, "messages[-1].role", "assist"),
    ],
)
def test_from_reference_bad_rows(tmp_path, row, field, fragment):
    path = write_jsonl(tmp_path / "rl.jsonl", [json.dumps(row)])
    with pytest.raises(DatasetError) as info:
        load_conversations(path, from_reference=True)
    assert (info.value.errors[0].line, info.value.errors[0].field) == (1, field)
    assert fragment in info.value.errors[0].message


# --- the loss mask ---------------------------------------------------------------------------


def test_mask_covers_exactly_the_assistant_turns_and_end_of_turn(tiny_tokenizer):
    messages = (
        {"role": "system", "content": "you are a helpful assistant"},
        {"role": "user", "content": "the movie was great"},
        {"role": "assistant", "content": "positive answer"},
        {"role": "user", "content": "a dull and boring film"},
        {"role": "assistant", "content": "negative label"},
    )
    row = encode_conversation(Conversation("c", messages, (2, 4)), tiny_tokenizer)
    assert masked_text(tiny_tokenizer, row) == "positive answer<|im_end|>negative label<|im_end|>"
    assert tiny_tokenizer.decode(row.input_ids) == tiny_tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False
    )
    # Each masked run is one contiguous span ending with <|im_end|>; the newline after it
    # and the "<|im_start|>assistant\n" header before it are not trained.
    spans, current = [], []
    for token, trained in zip(row.input_ids, row.loss_mask, strict=True):
        if trained:
            current.append(token)
        elif current:
            spans.append(tiny_tokenizer.decode(current))
            current = []
    assert spans == ["positive answer<|im_end|>", "negative label<|im_end|>"]


def test_weight_zero_turn_is_not_trained(tiny_tokenizer):
    messages = (
        {"role": "user", "content": "the movie"},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "a film"},
        {"role": "assistant", "content": "negative"},
    )
    row = encode_conversation(Conversation("c", messages, (3,)), tiny_tokenizer)
    assert masked_text(tiny_tokenizer, row) == "negative<|im_end|>"


def test_plain_template_trains_the_reply_and_eos(tiny_tokenizer):
    messages = ({"role": "user", "content": "the movie"}, {"role": "assistant", "content": "great"})
    row = encode_conversation(Conversation("c", messages, (1,)), tiny_tokenizer, "plain")
    assert tiny_tokenizer.decode(row.input_ids) == "user: the movie\nassistant: great<|im_end|>\n"
    assert masked_text(tiny_tokenizer, row) == " great<|im_end|>"


def test_mask_on_the_real_tokenizer_with_default_system_prompt(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = ({"role": "user", "content": "12 plus 30"}, {"role": "assistant", "content": "42"})
    row = encode_conversation(Conversation("c", messages, (1,)), tokenizer)
    assert masked_text(tokenizer, row) == "42<|im_end|>"


def test_tokenize_names_too_long_rows(tmp_path, tiny_tokenizer):
    long_reply = {"role": "assistant", "content": "the movie was great " * 30}
    path = write_jsonl(
        tmp_path / "s.jsonl", [conversation(USER, ASSISTANT), conversation(USER, long_reply)]
    )
    rows = load_conversations(path)
    assert len(tokenize_conversations(rows, tiny_tokenizer)) == 2
    with pytest.raises(DatasetError) as info:
        tokenize_conversations(rows, tiny_tokenizer, max_tokens=64)
    assert [(e.line, e.field) for e in info.value.errors] == [(2, "messages")]
    assert "the limit is 64" in str(info.value)


def test_template_that_rewrites_earlier_turns_is_a_row_error(tmp_path):
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m['role'] }}: "
        "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    rows = load_conversations(write_jsonl(tmp_path / "r.jsonl", [conversation(USER, ASSISTANT)]))
    with pytest.raises(DatasetError) as info:
        tokenize_conversations(rows, tokenizer)
    assert info.value.errors[0].line == 1
    assert "cannot be located" in info.value.errors[0].message


def test_a_tokenizer_without_template_needs_plain():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="plain"):
        encode_conversation(Conversation("c", (USER, ASSISTANT), (1,)), tokenizer)
