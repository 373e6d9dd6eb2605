"""resolve_data_path: plain paths pass through; builtin: specs are prepared into the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from openrft.data import load_examples, resolve_data_path
from openrft.errors import ConfigError


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPENRFT_CACHE", str(tmp_path))
    return tmp_path


def test_plain_path_is_unchanged(cache: Path) -> None:
    assert resolve_data_path("some/dir/train.jsonl") == Path("some/dir/train.jsonl")
    assert not (cache / "data").exists()


def test_builtin_is_prepared_once(cache: Path) -> None:
    validation = resolve_data_path("builtin:sst2/validation", "data.validation_file")
    assert validation == cache / "data" / "sst2" / "validation.jsonl"
    assert len(load_examples(validation)) == 200
    train = resolve_data_path("builtin:sst2/train")
    assert train == cache / "data" / "sst2" / "train.jsonl"
    assert len(load_examples(train)) == 672
    # A second call reuses the files rather than rewriting them.
    stamp = train.stat().st_mtime_ns
    assert resolve_data_path("builtin:sst2/train") == train
    assert train.stat().st_mtime_ns == stamp


def test_missing_half_is_prepared_again(cache: Path) -> None:
    train = resolve_data_path("builtin:sst2/train")
    (cache / "data" / "sst2" / "validation.jsonl").unlink()
    content = train.read_bytes()
    resolve_data_path("builtin:sst2/train")
    assert (cache / "data" / "sst2" / "validation.jsonl").is_file()
    assert train.read_bytes() == content


@pytest.mark.parametrize("spec", ["builtin:mnist/train", "builtin:sst2/test", "builtin:sst2"])
def test_unknown_builtin_lists_choices(cache: Path, spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_data_path(spec, "data.validation_file")
    assert info.value.field == "data.validation_file"
    assert "builtin:gsm8k/validation" in str(info.value)
    assert not (cache / "data").exists()
