"""Export a trained run: the PEFT adapter, a merged transformers model, or a GGUF file.

    openrft export RUN_DIR --format peft|merged|gguf --out PATH [--dtype float32|...]

RUN_DIR is a run directory (its final/, else its latest checkpoint), a final/ directory or a
checkpoint directory. The base model of a LoRA run is the run's `model.name` (config.toml),
resolved like training does (`resolve_model_dir`: alias, HF directory or .gguf file).

- peft: the adapter as trained (adapter_config.json, adapter_model.safetensors, tokenizer).
- merged: base + adapter merged (`merge_and_unload`), saved as safetensors with the
  tokenizer; a full fine-tuning run's weights are saved as they are, cast to `dtype`.
- gguf: one GGUF file (llama or qwen2 architecture; F32, F16 or BF16 tensors, or with --quant
  block-quantized matrices: gguf's quantizers, openrft.gguf_kquants for the k-quants) written with
  the `gguf` package the way llama.cpp's convert_hf_to_gguf.py lays it out: llama's Q/K rows
  permuted for rope, tied output embeddings left out, and the byte-level BPE tokenizer
  (tokens, scores, types, merges, special ids, chat template) as metadata.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from openrft import gguf_kquants
from openrft.errors import ModelError, RFTError
from openrft.gguf_kquants import FALLBACK, MIXTURES, QK_K, tensor_type
from openrft.models.load import resolve_model_dir

FORMATS = ("peft", "merged", "gguf")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GGUF_TYPES = {
    "float32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "float16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bfloat16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
}
# Block-quantized GGUF types (`--quant`): the 32-value block types gguf's own quantizer writes,
# then the k-quant mixtures openrft.gguf_kquants writes (gguf 0.19 cannot): (main type, file type).
GGUF_QUANTS = {
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q5_1": (gguf.GGMLQuantizationType.Q5_1, gguf.LlamaFileType.MOSTLY_Q5_1),
    "q5_0": (gguf.GGMLQuantizationType.Q5_0, gguf.LlamaFileType.MOSTLY_Q5_0),
    "q4_1": (gguf.GGMLQuantizationType.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
    "q4_0": (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
} | {name: (main, file_type) for name, (main, _, file_type) in MIXTURES.items()}
# transformers model_type -> GGUF architecture (Mistral-style llamas are "llama" in llama.cpp)
ARCHITECTURES = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}
ROPE_PERMUTED = {gguf.MODEL_ARCH.LLAMA}  # llama.cpp stores these Q/K rows interleaved for rope
# The pre-tokenizer of the GGUF files the built-in aliases come from (models.load.ALIASES).
ALIAS_PRE_TOKENIZERS = {"smollm2-135m-instruct": "smollm", "qwen2.5-coder-0.5b-instruct": "qwen2"}
# Byte-level pre-tokenizer split regexes llama.cpp knows, by their `tokenizer.ggml.pre` name.
PRE_TOKENIZER_SPLITS = {
    "qwen2": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
    "llama-bpe": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
}


class ExportError(RFTError):
    """A run cannot be exported in the asked format (names the reason)."""


@dataclass(frozen=True)
class TrainedWeights:
    directory: Path  # holds adapter_config.json + adapter_model.safetensors, or a full model
    is_adapter: bool
    base_model: str  # the run's model.name ("" when unknown: full weights need none)


def locate_weights(path: str | Path) -> TrainedWeights:
    """The trained weights in a run directory, final/ directory or checkpoint directory."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ExportError(f"{root} is not a directory (give a run, final/ or checkpoint dir)")
    checkpoints = sorted((root / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
    candidates = [root, root / "final", root / "model"] + [c / "model" for c in checkpoints[::-1]]
    for directory in candidates:
        if (directory / "adapter_config.json").exists():
            return TrainedWeights(directory, True, _base_model(directory))
        if (directory / "config.json").exists():
            return TrainedWeights(directory, False, _base_model(directory))
    raise ExportError(f"no adapter or model weights in {root} (its final/ or checkpoints/)")


def _base_model(weights_dir: Path) -> str:
    """`model.name` from the nearest config.toml (final/ -> run dir, step-N/model -> step-N),
    else the adapter's recorded base model directory."""
    for directory in (weights_dir, weights_dir.parent, weights_dir.parent.parent):
        config = directory / "config.toml"
        if config.exists():
            name = tomllib.loads(config.read_text()).get("model", {}).get("name")
            if name:
                return str(name)
    adapter = weights_dir / "adapter_config.json"
    if adapter.exists():
        return json.loads(adapter.read_text()).get("base_model_name_or_path") or ""
    return ""


def export(
    source: str | Path, fmt: str, out: str | Path, dtype: str = "float32", quant: str = ""
) -> Path:
    """Export the run at `source` to `out`; returns the written directory or file. `quant`
    (gguf only) block-quantizes the weight matrices: one of GGUF_QUANTS."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    if quant and (fmt != "gguf" or quant not in GGUF_QUANTS):
        choices = ", ".join(GGUF_QUANTS)
        raise ExportError(f"--quant {quant!r}: gguf only, one of {choices}")
    weights = locate_weights(source)
    out = Path(out).expanduser()
    if fmt == "gguf":
        kind = quant or dtype
        target = out if out.suffix == ".gguf" else out / f"model-{_gguf_suffix(kind)}.gguf"
        _refuse_existing(target)
        model, tokenizer = merged_model(weights)
        return write_gguf(model, tokenizer, target, kind, _known_pre(weights.base_model))
    _refuse_existing(out)
    if fmt == "peft":
        return export_peft(weights, out)
    model, tokenizer = merged_model(weights)
    return _atomic_dir(out, lambda tmp: _save_merged(model.to(DTYPES[dtype]), tokenizer, tmp))


def export_peft(weights: TrainedWeights, out: Path) -> Path:
    """Copy the adapter and tokenizer files: loadable with `PeftModel.from_pretrained`."""
    if not weights.is_adapter:
        raise ExportError(
            f"{weights.directory} holds full fine-tuned weights (lora.enabled = false), not a "
            "LoRA adapter; export it with --format merged or --format gguf"
        )
    return _atomic_dir(out, lambda tmp: shutil.copytree(weights.directory, tmp, dirs_exist_ok=True))


def merged_model(weights: TrainedWeights) -> tuple[PreTrainedModel, object]:
    """The trained model as one dense float32 transformers model, with its tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(weights.directory)
    if not weights.is_adapter:
        return AutoModelForCausalLM.from_pretrained(
            weights.directory, dtype=torch.float32
        ), tokenizer
    if not weights.base_model:
        raise ExportError(f"cannot tell the base model of {weights.directory}: no config.toml")
    from peft import PeftModel

    try:
        base_dir = resolve_model_dir(weights.base_model)
    except ModelError as exc:
        raise ExportError(f"the base model of {weights.directory}: {exc}") from exc
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, weights.directory).merge_and_unload()
    return model.eval(), tokenizer


def _save_merged(model: PreTrainedModel, tokenizer: object, directory: Path) -> None:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)  # type: ignore[attr-defined]


def _refuse_existing(out: Path) -> None:
    if out.exists() and (out.is_file() or any(out.iterdir())):
        raise ExportError(f"{out} exists already; remove it or choose another --out")


def _atomic_dir(out: Path, fill) -> Path:
    """Write a directory under a temporary name, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        staging = Path(tmp) / "out"
        staging.mkdir()
        fill(staging)
        if out.exists():  # an empty directory
            out.rmdir()
        os.replace(staging, out)
    return out


def _gguf_suffix(kind: str) -> str:
    return {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}.get(kind, kind)


def _known_pre(base_model: str) -> str | None:
    """The source GGUF's pre-tokenizer name for an alias or a .gguf base model."""
    if base_model in ALIAS_PRE_TOKENIZERS:
        return ALIAS_PRE_TOKENIZERS[base_model]
    path = Path(base_model).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        field = gguf.GGUFReader(path).get_field(gguf.Keys.Tokenizer.PRE)
        return str(field.contents()) if field is not None else None
    return None


def write_gguf(
    model: PreTrainedModel, tokenizer, path: Path, dtype: str = "float32", pre: str | None = None
) -> Path:
    """Write `model` (llama or qwen2) and its byte-level BPE tokenizer as one GGUF file, its
    weight matrices as `dtype` (float32, float16, bfloat16) or a GGUF_QUANTS type. `pre`
    overrides the pre-tokenizer name that is otherwise read off the tokenizer."""
    config = model.config
    arch = ARCHITECTURES.get(config.model_type)
    if arch is None:
        supported = ", ".join(ARCHITECTURES)
        raise ExportError(f"GGUF export supports {supported} models, not {config.model_type!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
    try:
        tensor_type, file_type = (GGUF_TYPES | GGUF_QUANTS)[dtype]
        _add_architecture(writer, config, file_type)
        vocab_rows = model.get_input_embeddings().weight.shape[0]
        _add_tokenizer(writer, tokenizer, vocab_rows, pre or pre_tokenizer_name(tokenizer))
        types = _add_tensors(writer, model, arch, dtype, tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, path)
    if dtype in GGUF_QUANTS:
        _report_types(dtype, types)
    return path


def _report_types(kind: str, types: dict[str, list[str]]) -> None:
    """Print the matrices' types, naming those that fell back from a k-quant."""
    counts = ", ".join(f"{len(names)} {name}" for name, names in sorted(types.items()))
    print(f"openrft: gguf {kind}: weight matrices as {counts}", flush=True)
    if kind in MIXTURES:
        fallbacks = sorted({t.name for t in FALLBACK.values()} | {"F16"})
        fell = [n for t in fallbacks for n in types.get(t, [])]
        if fell:
            rule = ", ".join(f"{k.name}->{v.name}" for k, v in FALLBACK.items())
            shown = ", ".join(fell[:6]) + (", ..." if len(fell) > 6 else "")
            print(f"openrft: {len(fell)} matrices have rows that are not whole {QK_K}-value "
                  f"super-blocks and fell back ({rule}; F16 if not whole 32-blocks): {shown}",
                  flush=True)  # fmt: skip


def _add_architecture(writer: gguf.GGUFWriter, config, file_type: int) -> None:
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ExportError(f"GGUF export: rope scaling {rope['rope_type']!r} is not supported yet")
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_name(str(getattr(config, "_name_or_path", "") or "openrft-export"))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 1e4))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(file_type)


def pre_tokenizer_name(tokenizer) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (`tokenizer.ggml.pre`)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    parts = spec.get("pretokenizers", []) if spec.get("type") == "Sequence" else [spec]
    kinds = [p.get("type") for p in parts]
    for part in parts:
        if part.get("type") == "Split":
            for name, regex in PRE_TOKENIZER_SPLITS.items():
                if part.get("pattern", {}).get("Regex") == regex:
                    return name
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    raise ExportError(
        f"GGUF export: unrecognised pre-tokenizer {json.dumps(spec)[:200]}; supported: the "
        "GPT-2 byte-level one, SmolLM (digits + byte-level), Qwen2 and Llama 3 splits"
    )


def _add_tokenizer(writer: gguf.GGUFWriter, tokenizer, vocab_rows: int, pre: str) -> None:
    """Tokens in id order (padded to the embedding rows), types, merges, special ids, template."""
    model_spec = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model_spec.get("type") != "BPE":
        raise ExportError("GGUF export supports byte-level BPE tokenizers (gpt2 type) only")
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))) or len(tokens) > vocab_rows:
        raise ExportError(f"token ids are not 0..{len(tokens) - 1} within {vocab_rows} rows")
    added = {i: t.special for i, t in tokenizer.added_tokens_decoder.items()}
    types = [
        gguf.TokenType.CONTROL if added.get(i) else
        gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL
        for i in range(len(tokens))
    ]  # fmt: skip
    padding = vocab_rows - len(tokens)  # embedding rows past the vocabulary (Qwen2.5 has some)
    tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab_rows)]
    types += [gguf.TokenType.UNUSED] * padding
    merges = [m if isinstance(m, str) else " ".join(m) for m in model_spec.get("merges", [])]
    writer.add_vocab_size(vocab_rows)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * vocab_rows)  # BPE ranks live in the merges; llama.cpp uses 0
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    _add_special_tokens(writer, tokenizer)


def _add_special_tokens(writer: gguf.GGUFWriter, tokenizer) -> None:
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    if tokenizer.eos_token_id is not None:
        writer.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _add_tensors(
    writer: gguf.GGUFWriter, model: PreTrainedModel, arch, kind: str, main_type
) -> dict[str, list[str]]:
    """Every weight under its GGUF name; 1-D tensors (norms, biases) stay F32, as in llama.cpp.
    Returns the GGUF names of the matrices by type written."""
    config = model.config
    written: dict[str, list[str]] = {}
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and tied:  # no output.weight: llama.cpp reuses token_embd
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"GGUF export: no GGUF name for tensor {name!r}")
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if arch in ROPE_PERMUTED and name.endswith(("q_proj.weight", "q_proj.bias")):
            array = rope_permute(array, config.num_attention_heads)
        elif arch in ROPE_PERMUTED and name.endswith(("k_proj.weight", "k_proj.bias")):
            array = rope_permute(array, config.num_key_value_heads)
        if array.ndim == 1:
            writer.add_tensor(gguf_name, np.ascontiguousarray(array))
            continue
        layers = config.num_hidden_layers
        qtype = _matrix_type(kind, main_type, gguf_name, array.shape, layers, tied)
        written.setdefault(qtype.name, []).append(gguf_name)
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name, np.ascontiguousarray(array))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gguf_name, array.astype(np.float16))
        else:
            data = gguf_kquants.quantize(array, qtype)
            writer.add_tensor(gguf_name, data, raw_dtype=qtype)
    return written


def _matrix_type(kind: str, main_type, gguf_name: str, shape, n_layers: int, tied: bool):
    """A k-quant mixture's rule for this matrix; else `main_type`, F16 where a row is not whole
    blocks (it cannot be block-quantized: F16, as llama.cpp does)."""
    if kind in MIXTURES:
        return tensor_type(kind, gguf_name, shape, n_layers, tied)
    if main_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return main_type
    if shape[-1] % gguf.GGML_QUANT_SIZES[main_type][0]:
        return gguf.GGMLQuantizationType.F16
    return main_type


def rope_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order: each head's two rotary halves interleaved."""
    shape = weights.shape
    return np.ascontiguousarray(
        weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])
        .swapaxes(1, 2)
        .reshape(shape)
    )
