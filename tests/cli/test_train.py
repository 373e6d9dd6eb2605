"""`openrft config`, `openrft train` and `openrft demo`, called in-process through `main(argv)`."""

from __future__ import annotations

import dataclasses
import tomllib
import typing

import pytest

from openrft.cli import main
from openrft.config import JobConfig, config_from_dict, field_comments, load_config


def _sections() -> list[str]:
    hints = typing.get_type_hints(JobConfig)
    return [
        f.name for f in dataclasses.fields(JobConfig) if dataclasses.is_dataclass(hints[f.name])
    ]


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
