"""Shared fixtures: a tiny model directory built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_model import build_tiny_tokenizer, make_tiny_model_dir  # noqa: E402

# Keep tests off the user's real cache.
os.environ.setdefault(
    "OPENRFT_CACHE", str(Path(__file__).parent.parent / ".cache" / "test-openrft")
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()
