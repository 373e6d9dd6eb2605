"""summarize_file / format_summary: counts, prompt-length percentiles, every error listed."""

from __future__ import annotations

import json
from pathlib import Path

from openrft.data import encode_prompt, format_summary, load_examples, summarize_file
from openrft.data.load import validate_file
from openrft.errors import RowError

from .helpers import USER, row, write_jsonl


def mixed_file(tmp_path: Path) -> Path:
    no_reference = json.dumps({"messages": [USER]})
    lines = [row(id="a"), "", "oops", no_reference, row(id="a"), row(id=3), row(id="b")]
    return write_jsonl(tmp_path / "mixed.jsonl", lines)


def test_summary_reports_every_error_without_raising(tmp_path: Path) -> None:
    path = mixed_file(tmp_path)
    summary = summarize_file(path)
    assert (summary.rows, summary.valid_rows) == (6, 3)
    assert summary.role_counts == {"system": 2, "user": 3}
    assert summary.rows_without_reference == 1
    assert summary.prompt_token_percentiles is None
    assert [(e.line, e.field) for e in summary.errors] == [(3, ""), (5, "id"), (6, "id")]
    # The same validator as load_examples: the same errors.
    assert summary.errors == validate_file(path).errors


def test_format_lists_each_error_line(tmp_path: Path) -> None:
    path = mixed_file(tmp_path)
    text = format_summary(summarize_file(path))
    assert "rows: 6 (3 valid, 3 error(s))" in text
    assert "turns by role: system 2, user 3" in text
    assert "rows without reference_answer: 1" in text
    assert f"{path}:5: id: duplicate id 'a'; first used on line 1" in text
    assert f"{path}:6: id: must be a non-empty string, got 3" in text
    assert f"{path}:3: not valid JSON" in text


def test_percentiles_with_tokenizer(tmp_path: Path, tiny_tokenizer) -> None:
    lines = [
        json.dumps({"messages": [{"role": "user", "content": "aaaa " * n}], "reference_answer": n})
        for n in range(1, 101)
    ]
    path = write_jsonl(tmp_path / "a.jsonl", lines)
    summary = summarize_file(path, tiny_tokenizer)
    lengths = sorted(len(encode_prompt(e.messages, tiny_tokenizer)) for e in load_examples(path))
    assert summary.prompt_token_percentiles == {
        "p50": lengths[49],
        "p90": lengths[89],
        "p99": lengths[98],
        "max": lengths[99],
    }
    assert f"prompt tokens: p50 {lengths[49]}, " in format_summary(summary)
    plain = summarize_file(path, tiny_tokenizer, "plain").prompt_token_percentiles
    assert plain is not None and plain["max"] < lengths[99]


def test_missing_file(tmp_path: Path) -> None:
    summary = summarize_file(tmp_path / "nope.jsonl")
    assert (summary.rows, summary.valid_rows) == (0, 0)
    assert summary.errors == [RowError(str(tmp_path / "nope.jsonl"), 0, "", "file not found")]
    assert "file not found" in format_summary(summary)
