"""Shared fixtures: a tiny model directory built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(scope="module")
def one_thread():
    """The tiny model gains nothing from threads, and OpenMP threads competing with another
    busy process on a small machine slow each decode step down by orders of magnitude.
    Modules that decode with it use it: pytestmark = pytest.mark.usefixtures("one_thread")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
