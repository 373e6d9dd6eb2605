"""Models by Hugging Face id (`org/name`): found in a Hugging Face cache laid out the way
huggingface_hub writes it (blobs, snapshot symlinks, refs/main), downloaded when online, and
refused with the paths looked at when neither. No test reaches the network: downloads are
faked, and the unreachable Hub is a closed port on loopback."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import scan_cache_dir

import openrft.models.hub as hub
from openrft.config import config_from_dict
from openrft.errors import ModelError
from openrft.jobs.service import DataDir, JobService
from openrft.models.load import load_model, resolve_model_dir

REPO = "tiny-org/tiny-llama"
SHA = "0123456789abcdef0123456789abcdef01234567"
OLD_SHA = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """An empty HF_HOME, offline unless a test says otherwise; returns its hub cache."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf" / "hub"


def cache_repo(cache: Path, model_dir: Path, sha: str, skip: str = "", main: bool = True) -> Path:
    """Put `model_dir`'s files into the cache as huggingface_hub does: content-addressed blobs,
    snapshots/<sha>/<file> symlinks to them, refs/main naming the snapshot."""
    repo = cache / ("models--" + REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / sha
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for file in sorted(model_dir.iterdir()):
        if file.name == skip:
            continue
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    if main:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(sha)
    return snapshot


def test_loads_the_refs_main_snapshot_from_the_cache(hf_home, tiny_model_dir, tmp_path):
    old = cache_repo(hf_home, tiny_model_dir, OLD_SHA, main=False)
    snapshot = cache_repo(hf_home, tiny_model_dir, SHA)
    # huggingface_hub itself reads this layout as one repo with both revisions.
    (info,) = scan_cache_dir(hf_home).repos
    assert info.repo_id == REPO and {r.commit_hash for r in info.revisions} == {SHA, OLD_SHA}

    assert resolve_model_dir(REPO) == snapshot != old
    model, tokenizer = load_model(REPO)
    assert model.config.num_hidden_layers == 2 and tokenizer.eos_token == "<|im_end|>"

    config = config_from_dict({"model": {"name": REPO}, "data": {"train_file": "builtin:x"}})
    assert config.model.name == REPO
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    service = JobService(DataDir(tmp_path / "data"))  # never started: validation only
    job = service.create_job({"model": {"name": REPO}, "data": {"train_file": str(data)}})
    assert job.config["model"]["name"] == REPO


def test_hf_hub_cache_wins_over_hf_home(hf_home, tiny_model_dir, tmp_path, monkeypatch):
    cache = tmp_path / "elsewhere"
    snapshot = cache_repo(cache, tiny_model_dir, SHA)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert resolve_model_dir(REPO) == snapshot


def test_offline_with_an_empty_cache_names_the_paths_tried(hf_home):
    with pytest.raises(ModelError) as info:
        resolve_model_dir(REPO)
    message = str(info.value)
    assert str(hf_home / "models--tiny-org--tiny-llama") in message
    assert "HF_HUB_OFFLINE" in message and f"hf download {REPO}" in message
    assert str(Path(REPO).resolve()) in message  # a mistyped local path reads the same


def test_a_snapshot_without_its_weights_is_not_a_model(hf_home, tiny_model_dir):
    snapshot = cache_repo(hf_home, tiny_model_dir, SHA, skip="model.safetensors")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE") as info:
        resolve_model_dir(REPO)
    assert str(snapshot) in str(info.value)


def test_a_local_directory_wins_over_an_id(hf_home, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "tiny-org" / "tiny-llama"
    local.mkdir(parents=True)
    (local / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    assert resolve_model_dir(REPO) == Path(REPO)


def test_downloads_when_online(hf_home, tiny_model_dir, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []

    def fake_download(repo_id, *, cache_dir, dry_run=False, ignore_patterns=None):
        calls.append((repo_id, Path(cache_dir), dry_run, ignore_patterns))
        names = [f.name for f in tiny_model_dir.iterdir()] + ["pytorch_model.bin"]
        if dry_run:
            return [huggingface_hub.DryRunFileInfo(SHA, 1, n, "", False, True) for n in names]
        return str(cache_repo(Path(cache_dir), tiny_model_dir, SHA))

    monkeypatch.setattr(hub, "snapshot_download", fake_download)
    snapshot = resolve_model_dir(REPO)
    assert snapshot == hf_home / "models--tiny-org--tiny-llama" / "snapshots" / SHA
    (listing, download) = calls
    assert listing == (REPO, hf_home, True, None)
    assert download[2] is False and {"*.bin", "*.gguf", "original/*"} <= set(download[3])
    calls.clear()
    assert resolve_model_dir(REPO) == snapshot and not calls  # cached now: no Hub call


def test_an_unreachable_hub_names_the_paths_tried(hf_home, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as probe:  # a port nothing listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ModelError, match="could not be reached") as info:
        resolve_model_dir(REPO)
    assert str(hf_home / "models--tiny-org--tiny-llama") in str(info.value)


def test_names_that_are_not_ids_stay_unknown(hf_home):
    for name in ("no-such-model", "a/b/c", "/abs/org/name"):
        with pytest.raises(ModelError, match="unknown model"):
            resolve_model_dir(name)
