"""`openrft grader new`: every template writes a grader whose own tests pass."""

from __future__ import annotations

import subprocess
import sys

import pytest

from openrft.cli import main
from openrft.rewards.templates import KINDS


@pytest.mark.parametrize("kind", KINDS)
def test_template_tests_pass(tmp_path, kind):
    directory = tmp_path / kind
    assert main(["grader", "new", kind, str(directory)]) == 0
    assert (directory / "grader.toml").exists()
    assert main(["grader", "validate", str(directory / "grader.toml")]) == 0
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(directory)],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_template_refuses_a_non_empty_directory(tmp_path, capsys):
    (tmp_path / "x").write_text("mine")
    assert main(["grader", "new", "math", str(tmp_path)]) == 1
    assert "not empty" in capsys.readouterr().err
