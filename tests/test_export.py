"""`openrft export`: each format is loaded back (peft, transformers, transformers' gguf_file)
and must compute what the trained model computes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from openrft.cli.sft import EXPORT_QUANTS
from openrft.export import GGUF_QUANTS, ExportError, export, locate_weights, rope_permute
from openrft.train.loop import train
from tests.train.helpers import tiny_job

PROBE = "<|im_start|>user\nsay the letter a<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir) -> Path:
    tmp = tmp_path_factory.mktemp("lora-run")
    # A high learning rate so the adapter moves the logits well past float noise.
    config = tiny_job(tmp, tiny_model_dir, "train.max_steps=2", "train.learning_rate=3e-2")
    train(config, tmp / "run", show_progress=False)
    return tmp / "run"


def _trained_logits(run: Path, base_dir: Path) -> torch.Tensor:
    """Logits of the trained policy as training leaves it: base + adapter, not merged."""
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, run / "final").eval()
    return _logits(model, AutoTokenizer.from_pretrained(run / "final"))


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROBE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


def test_locate_weights_finds_final_then_checkpoints(lora_run):
    weights = locate_weights(lora_run)
    assert weights.is_adapter and weights.directory == lora_run / "final"
    assert locate_weights(lora_run / "final").directory == lora_run / "final"
    step = sorted((lora_run / "checkpoints").iterdir())[-1]
    assert locate_weights(step).directory == step / "model"


def test_peft_export_loads_with_peft(lora_run, tiny_model_dir, tmp_path):
    out = export(lora_run, "peft", tmp_path / "adapter")
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out).eval()
    expected = _trained_logits(lora_run, tiny_model_dir)
    assert torch.allclose(_logits(model, AutoTokenizer.from_pretrained(out)), expected)


def test_merged_export_is_the_trained_model_without_peft(lora_run, tiny_model_dir, tmp_path):
    out = export(lora_run, "merged", tmp_path / "merged")
    assert not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    expected = _trained_logits(lora_run, tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert not torch.allclose(_logits(base, tokenizer), expected, atol=1e-3)  # training moved it
    assert torch.allclose(_logits(model, tokenizer), expected, atol=1e-5)
    ids = tokenizer(PROBE, return_tensors="pt")["input_ids"]
    generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 4 or generated[0, -1] == tokenizer.eos_token_id


@pytest.mark.parametrize(("dtype", "atol"), [("float32", 1e-4), ("float16", 5e-2)])
def test_gguf_export_loads_back_with_transformers(lora_run, tiny_model_dir, tmp_path, dtype, atol):
    path = export(lora_run, "gguf", tmp_path / "gguf", dtype=dtype)
    assert path.suffix == ".gguf" and path.name == f"model-{dtype[0]}{dtype[-2:]}.gguf"
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    reference_tokenizer = AutoTokenizer.from_pretrained(lora_run / "final")
    assert tokenizer(PROBE)["input_ids"] == reference_tokenizer(PROBE)["input_ids"]
    assert tokenizer.chat_template == reference_tokenizer.chat_template
    expected = _trained_logits(lora_run, tiny_model_dir)
    assert torch.allclose(_logits(model, reference_tokenizer), expected, atol=atol)


@pytest.mark.parametrize(("quant", "tolerance"), [("q8_0", 0.02), ("q4_0", 0.3)])
def test_quantized_gguf_loads_back_and_generates(lora_run, tiny_model_dir, tmp_path, quant,
                                                 tolerance):  # fmt: skip
    path = export(lora_run, "gguf", tmp_path / "gguf", quant=quant)
    assert path.name == f"model-{quant}.gguf"
    kinds = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert kinds["blk.0.attn_q.weight"] == quant.upper()  # matrices quantized
    assert kinds["blk.0.attn_norm.weight"] == "F32"  # norms kept whole, as llama.cpp does
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(lora_run / "final")
    expected = _trained_logits(lora_run, tiny_model_dir)
    error = (_logits(model, tokenizer) - expected).abs().mean() / expected.abs().mean()
    assert 0 < error < tolerance  # quantized: close to the merged model, not equal
    ids = tokenizer(PROBE, return_tensors="pt")["input_ids"]
    generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > ids.shape[1]


def test_quantizing_is_gguf_only_and_unknown_types_list_all(lora_run, tmp_path):
    with pytest.raises(ExportError, match="gguf only"):
        export(lora_run, "merged", tmp_path / "m", quant="q8_0")
    with pytest.raises(ExportError, match="q4_0, q4_k_m, q5_k_m, q4_k, q5_k, q6_k"):
        export(lora_run, "gguf", tmp_path / "g", quant="q3_k")
    assert tuple(GGUF_QUANTS) == EXPORT_QUANTS  # the CLI's choices


def test_k_quant_export_falls_back_where_rows_are_not_256_wide(lora_run, tiny_model_dir, tmp_path,
                                                               capsys):  # fmt: skip
    # The tiny model's rows are 64 and 128 wide: q4_k_m writes Q5_0 (Q4_K's fallback) and
    # Q8_0 (Q6_K's) instead, and says so; tests/test_gguf_kquants.py covers 256-wide rows.
    path = export(lora_run, "gguf", tmp_path / "gguf", quant="q4_k_m")
    assert path.name == "model-q4_k_m.gguf"
    assert "fell back (Q4_K->Q5_0" in capsys.readouterr().out
    reader = gguf.GGUFReader(path)
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == "Q5_0" and kinds["blk.0.attn_v.weight"] == "Q8_0"
    assert kinds["blk.0.attn_norm.weight"] == "F32"
    file_type = reader.get_field("general.file_type").contents()
    assert file_type == gguf.LlamaFileType.MOSTLY_Q4_K_M
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(lora_run / "final")
    expected = _trained_logits(lora_run, tiny_model_dir)
    error = (_logits(model, tokenizer) - expected).abs().mean() / expected.abs().mean()
    assert 0 < error < 0.1


def test_full_fine_tuning_exports_merged_and_refuses_peft(tmp_path, tiny_model_dir):
    config = tiny_job(tmp_path, tiny_model_dir, "lora.enabled=false", "train.max_steps=1")
    train(config, tmp_path / "run", show_progress=False)
    with pytest.raises(ExportError, match="full fine-tuned weights"):
        export(tmp_path / "run", "peft", tmp_path / "adapter")
    out = export(tmp_path / "run", "merged", tmp_path / "merged", dtype="bfloat16")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_export_refuses_bad_input(lora_run, tmp_path):
    with pytest.raises(ExportError, match="is not a directory"):
        export(tmp_path / "missing", "merged", tmp_path / "out")
    with pytest.raises(ExportError, match="no adapter or model weights"):
        export(tmp_path, "merged", tmp_path / "out")
    with pytest.raises(ExportError, match="unknown format"):
        export(lora_run, "onnx", tmp_path / "out")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ExportError, match="exists already"):
        export(lora_run, "merged", tmp_path / "taken")


def test_rope_permute_interleaves_each_heads_halves():
    # One head of 4 rows [r0, r1, r2, r3]: halves (r0, r1) and (r2, r3) interleave to r0 r2 r1 r3.
    rows = torch.arange(4.0).reshape(4, 1).numpy()
    assert rope_permute(rows, 1)[:, 0].tolist() == [0.0, 2.0, 1.0, 3.0]
    two_heads = torch.arange(8.0).reshape(8, 1).numpy()
    assert rope_permute(two_heads, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_cli_export(lora_run, tmp_path):
    out = tmp_path / "cli-merged"
    done = subprocess.run(
        [sys.executable, "-m", "openrft.cli", "export", str(lora_run), "--format", "merged"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "config.json").exists() and str(out) in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "openrft.cli", "export", str(tmp_path / "nope")]
        + ["--format", "gguf", "--out", str(tmp_path / "x.gguf")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "is not a directory" in bad.stderr


def test_gguf_of_a_qwen2_model_loads_back(tmp_path, tiny_tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from openrft.export import write_gguf

    config = Qwen2Config(
        vocab_size=len(tiny_tokenizer) + 3,  # embedding rows past the vocabulary, as Qwen2.5's
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    path = write_gguf(model, tiny_tokenizer, tmp_path / "qwen.gguf", pre="qwen2")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name).eval()
    assert loaded.config.model_type == "qwen2"
    expected = _logits(model, tiny_tokenizer)
    assert torch.allclose(_logits(loaded, tiny_tokenizer), expected, atol=1e-5)
