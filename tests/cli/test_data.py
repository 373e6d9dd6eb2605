"""`openrft data validate|prepare`, called in-process through `main(argv)`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openrft.cli import main

ROW = {"messages": [{"role": "user", "content": "Is this good?"}], "reference_answer": "yes"}


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_data_validate_good_file(tmp_path, capsys):
    path = _write_jsonl(tmp_path / "good.jsonl", [json.dumps(ROW)] * 3)
    assert main(["data", "validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rows: 3 (3 valid, 0 error(s))" in out


def test_data_validate_with_a_model_reports_prompt_tokens(tmp_path, tiny_model_dir, capsys):
    path = _write_jsonl(tmp_path / "good.jsonl", [json.dumps(ROW)] * 2)
    assert main(["data", "validate", str(path), "--model", str(tiny_model_dir)]) == 0
    assert "prompt tokens: p50" in capsys.readouterr().out


def test_data_validate_bad_file(tmp_path, capsys):
    bad_role = {"messages": [{"role": "robot", "content": "x"}], "reference_answer": "y"}
    lines = [json.dumps(ROW), "not json", json.dumps(bad_role)]
    path = _write_jsonl(tmp_path / "bad.jsonl", lines)
    assert main(["data", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "rows: 3 (1 valid" in out
    assert f"{path}:2: " in out
    assert f"{path}:3: messages[0].role" in out


def test_data_validate_missing_file(tmp_path, capsys):
    path = tmp_path / "absent.jsonl"
    assert main(["data", "validate", str(path)]) == 1
    assert "file not found" in capsys.readouterr().out


def test_data_prepare_sst2_writes_two_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENRFT_CACHE", str(tmp_path / "cache"))
    out_dir = tmp_path / "sst2"
    assert main(["data", "prepare", "sst2", "--out", str(out_dir), "--validation-size", "50"]) == 0
    train, validation = out_dir / "train.jsonl", out_dir / "validation.jsonl"
    assert sorted(p.name for p in out_dir.iterdir()) == ["train.jsonl", "validation.jsonl"]
    assert str(train) in capsys.readouterr().out
    train_rows = train.read_text().splitlines()
    validation_rows = validation.read_text().splitlines()
    assert len(validation_rows) == 50
    assert len(train_rows) + len(validation_rows) == 872
    assert main(["data", "validate", str(train)]) == 0


def test_data_prepare_unknown_name_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["data", "prepare", "imdb", "--out", str(tmp_path)])
    assert info.value.code == 2
