"""The `openrft` command line, called in-process through `main(argv)` (and once as a module)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest

from openrft.cli import main
from openrft.config import JobConfig, config_from_dict, field_comments, load_config

ROW = {"messages": [{"role": "user", "content": "Is this good?"}], "reference_answer": "yes"}


def _sections() -> list[str]:
    hints = typing.get_type_hints(JobConfig)
    return [
        f.name for f in dataclasses.fields(JobConfig) if dataclasses.is_dataclass(hints[f.name])
    ]


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_module_help_in_a_subprocess():
    result = subprocess.run(
        [sys.executable, "-m", "openrft.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    for command in ("train", "demo", "config", "data"):
        assert command in result.stdout


def test_no_command_prints_help_and_returns_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# --- config ----------------------------------------------------------------------------------


def test_config_prints_every_section_with_comments(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    for section in _sections():
        assert f"\n[{section}]\n" in out
    comments = field_comments()
    for line in ("rank = 16  # " + comments["lora.rank"], "seed = 0  # " + comments["train.seed"]):
        assert line in out
    commented = [line for line in out.splitlines() if " = " in line and "  # " in line]
    assert len(commented) >= 40


def test_config_output_is_the_resolved_config_as_toml(capsys):
    assert main(["config", "--set", "train.lr_schedule=cosine", "--set", "lora.rank=8"]) == 0
    printed = config_from_dict(tomllib.loads(capsys.readouterr().out))
    assert printed == load_config(overrides=["train.lr_schedule=cosine", "lora.rank=8"])
    assert printed.lora.rank == 8


def test_config_reads_a_file(tmp_path, capsys):
    path = tmp_path / "job.toml"
    path.write_text('name = "from-file"\n[train]\nepochs = 3\n')
    assert main(["config", str(path)]) == 0
    out = capsys.readouterr().out
    assert 'name = "from-file"' in out
    assert "epochs = 3" in out


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--set", "lora.rank=0"], ["'lora.rank'", "allowed 1 to 1024"]),
        (["--set", "train.learnig_rate=1"], ["'train.learnig_rate'", "did you mean"]),
        (["--set", "train.lr_schedule=linear"], ["'train.lr_schedule'", "cosine"]),
    ],
)
def test_config_error_returns_1_and_names_the_field(capsys, args, fragments):
    assert main(["config", *args]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("openrft: error: ")
    for fragment in fragments:
        assert fragment in captured.err


def test_config_missing_file_returns_1(tmp_path, capsys):
    assert main(["config", str(tmp_path / "absent.toml")]) == 1
    assert "not found" in capsys.readouterr().err


# --- data ------------------------------------------------------------------------------------


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


# --- train / demo: only the paths that stop before training ----------------------------------


def test_train_without_a_config_returns_2(capsys):
    assert main(["train"]) == 2
    assert "give a CONFIG file" in capsys.readouterr().err


def test_train_resume_without_config_toml_returns_1(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no config.toml" in err
    assert str(tmp_path) in err


def test_train_bad_config_returns_1_before_training(tmp_path, capsys):
    path = tmp_path / "job.toml"
    path.write_text("[lora]\nrank = 0\n")
    assert main(["train", str(path), "--output", str(tmp_path / "run")]) == 1
    assert "'lora.rank'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_max_steps_flag_is_validated(tmp_path, capsys):
    path = tmp_path / "job.toml"
    path.write_text("")
    assert main(["train", str(path), "--max-steps", "-1", "--output", str(tmp_path / "r")]) == 1
    assert "'train.max_steps'" in capsys.readouterr().err


def test_train_refuses_an_existing_run_directory(tmp_path, capsys):
    path = tmp_path / "job.toml"
    path.write_text("")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    assert main(["train", str(path), "--output", str(run)]) == 1
    assert "--resume" in capsys.readouterr().err


def test_train_resume_with_a_bad_saved_config_returns_1(tmp_path, capsys):
    (tmp_path / "config.toml").write_text("[train]\nepochs = 0\n")
    assert main(["train", "--resume", str(tmp_path)]) == 1
    assert "'train.epochs'" in capsys.readouterr().err


def test_demo_bad_override_returns_1(tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path / "d"), "--set", "rollout.top_k=-1"]) == 1
    assert "'rollout.top_k'" in capsys.readouterr().err
