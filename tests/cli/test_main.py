"""The `openrft` entry point: `main(argv)` dispatch and `python -m openrft.cli`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from openrft.cli import main


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


def test_building_the_parser_imports_no_heavy_module():
    """Handlers import torch, transformers and the servers lazily: `openrft --help` stays fast."""
    code = (
        "import sys; from openrft.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'transformers', 'uvicorn', 'httpx', 'rich') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
