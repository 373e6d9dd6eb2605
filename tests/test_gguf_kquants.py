"""openrft's k-quant writers (openrft.gguf_kquants): gguf's own dequantizer must read back what
they write, within a bound per type, no worse than plain max-abs scales, in GGML's sizes; and
a k-quant GGUF of a model with 256-wide rows loads back with transformers and generates."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from openrft.gguf_kquants import FALLBACK, K_TYPES, MIXTURES, QK_K, quantize, tensor_type

QT = gguf.GGMLQuantizationType
# Relative RMS error bound on N(0, 1) rows (docs/serving.md): measured 0.0707 / 0.0356 / 0.0167
# (plain max-abs scales: 0.0782 / 0.0384 / 0.0207).
BOUNDS = {QT.Q4_K: 0.075, QT.Q5_K: 0.038, QT.Q6_K: 0.018}


def _roundtrip(x: np.ndarray, qtype, search: bool = True) -> np.ndarray:
    data = quantize(x, qtype, search)
    return gguf.quants.dequantize(data, qtype)


def _rel_rms(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sqrt(((y - x) ** 2).mean() / (x**2).mean()))


@pytest.fixture(scope="module")
def gaussian() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((48, 3 * QK_K)).astype(np.float32)


@pytest.mark.parametrize("qtype", K_TYPES)
def test_k_quant_round_trips_through_gguf_dequantize(gaussian, qtype):
    data = quantize(gaussian, qtype)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    assert block == QK_K and data.dtype == np.uint8
    assert data.shape == (48, 3 * type_size)  # GGML's byte size per 256 values
    back = gguf.quants.dequantize(data, qtype)
    assert back.shape == gaussian.shape
    assert _rel_rms(back, gaussian) < BOUNDS[qtype]


@pytest.mark.parametrize("qtype", K_TYPES)
def test_fitted_scales_beat_max_abs_scales(gaussian, qtype):
    heavy = gaussian * np.where(np.arange(gaussian.shape[1]) % 61 == 0, 6.0, 1.0)  # outliers
    for x in (gaussian, heavy.astype(np.float32)):
        fitted = _rel_rms(_roundtrip(x, qtype), x)
        naive = _rel_rms(_roundtrip(x, qtype, search=False), x)
        assert fitted <= naive
    assert fitted < 0.95 * naive  # with outliers the fit pays off clearly


def test_k_quants_rank_by_bits(gaussian):
    errors = [_rel_rms(_roundtrip(gaussian, t), gaussian) for t in (QT.Q4_K, QT.Q5_K, QT.Q6_K)]
    assert errors[0] > 1.8 * errors[1] and errors[1] > 1.8 * errors[2]
    # Q4_K (4.5 bits a value) beats Q4_1 (5 bits), Q5_K (5.5) beats Q5_0 (5.5).
    for ours, theirs in ((QT.Q4_K, QT.Q4_1), (QT.Q5_K, QT.Q5_0)):
        legacy = gguf.quants.dequantize(gguf.quants.quantize(gaussian, theirs), theirs)
        assert _rel_rms(_roundtrip(gaussian, ours), gaussian) < _rel_rms(legacy, gaussian)


@pytest.mark.parametrize("qtype", K_TYPES)
def test_zero_constant_and_extreme_blocks(qtype):
    zero = np.zeros((2, QK_K), np.float32)
    assert np.array_equal(_roundtrip(zero, qtype), zero)
    for value in (0.37, -2.5, 1e-3, 300.0):
        const = np.full((1, QK_K), value, np.float32)
        assert np.allclose(_roundtrip(const, qtype), const, rtol=0.02)
    rng = np.random.default_rng(1)
    for magnitude in (1e-3, 1e3, 1e4):  # fp16 d/dmin hold these scales
        x = (rng.standard_normal((4, QK_K)) * magnitude).astype(np.float32)
        assert _rel_rms(_roundtrip(x, qtype), x) < BOUNDS[qtype] * 1.2
    mixed = rng.standard_normal((2, 2 * QK_K)).astype(np.float32)
    mixed[0, :QK_K] *= 1e-4  # a tiny super-block next to a normal one: each has its own d
    back = _roundtrip(mixed, qtype)
    assert np.isfinite(back).all()
    assert _rel_rms(back[0, :QK_K], mixed[0, :QK_K]) < BOUNDS[qtype] * 1.5
    one_hot = np.zeros((1, QK_K), np.float32)
    one_hot[0, 7] = -5.0
    assert np.allclose(_roundtrip(one_hot, qtype), one_hot, atol=0.03)


def test_rows_must_be_whole_super_blocks_and_finite():
    with pytest.raises(ValueError, match="not whole 256-blocks"):
        quantize(np.ones((2, 320), np.float32), QT.Q4_K)
    bad = np.ones((1, QK_K), np.float32)
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        quantize(bad, QT.Q6_K)
    assert quantize(np.ones((3, 64), np.float32), QT.Q8_0).shape == (3, 68)  # gguf's own


def test_mixture_rules_and_fallbacks():
    shape, layers = (512, 256), 8
    assert tensor_type("q4_k_m", "blk.0.attn_q.weight", shape, layers, False) == QT.Q4_K
    down = [
        tensor_type("q4_k_m", f"blk.{i}.ffn_down.weight", shape, layers, False) for i in range(8)
    ]
    more = [i for i, qtype in enumerate(down) if qtype == QT.Q6_K]
    assert more == [0, 1, 6, 7]  # first and last quarter: half the layers
    assert tensor_type("q5_k_m", "blk.7.attn_v.weight", shape, layers, False) == QT.Q6_K
    assert tensor_type("q5_k_m", "blk.7.attn_k.weight", shape, layers, False) == QT.Q5_K
    assert tensor_type("q4_k_m", "output.weight", shape, layers, False) == QT.Q6_K
    assert tensor_type("q4_k_m", "token_embd.weight", shape, layers, False) == QT.Q4_K
    assert tensor_type("q4_k_m", "token_embd.weight", shape, layers, True) == QT.Q6_K  # tied
    assert tensor_type("q4_k", "output.weight", shape, layers, False) == QT.Q4_K
    # Rows of 576 (SmolLM2) are not whole 256-blocks: the fallback; rows of 48: F16.
    assert tensor_type("q4_k_m", "blk.3.attn_q.weight", (576, 576), layers, False) == QT.Q5_0
    assert tensor_type("q4_k_m", "output.weight", (9, 576), layers, False) == QT.Q8_0
    assert tensor_type("q6_k", "blk.3.attn_q.weight", (64, 48), layers, False) == QT.F16
    assert FALLBACK == {QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q8_0, QT.Q6_K: QT.Q8_0}
    assert MIXTURES["q4_k_m"][2] == gguf.LlamaFileType.MOSTLY_Q4_K_M


def test_k_quant_gguf_loads_back_and_generates(tmp_path, tiny_tokenizer):
    from openrft.export import write_gguf

    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=256,  # rows of whole 256-value super-blocks: no fallback
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    ids = tiny_tokenizer("the movie was great and the acting", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model(input_ids=ids).logits[0]
    errors = {}
    for quant in ("q4_k_m", "q6_k"):
        path = write_gguf(model, tiny_tokenizer, tmp_path / f"{quant}.gguf", quant)
        reader = gguf.GGUFReader(path)
        kinds = {t.name: t.tensor_type for t in reader.tensors}
        assert reader.get_field("general.file_type").contents() == MIXTURES[quant][2]
        if quant == "q4_k_m":
            assert kinds["blk.1.attn_q.weight"] == QT.Q4_K
            assert kinds["blk.0.attn_v.weight"] == kinds["blk.3.ffn_down.weight"] == QT.Q6_K
            assert kinds["blk.1.ffn_down.weight"] == QT.Q4_K
            assert kinds["output.weight"] == QT.Q6_K
        else:
            assert {kinds[n] for n in kinds if not n.endswith("norm.weight")} == {QT.Q6_K}
        assert kinds["blk.0.attn_norm.weight"] == QT.F32
        loaded = AutoModelForCausalLM.from_pretrained(
            tmp_path, gguf_file=path.name, dtype=torch.float32
        ).eval()
        with torch.no_grad():
            logits = loaded(input_ids=ids).logits[0]
        errors[quant] = float((logits - expected).abs().mean() / expected.abs().mean())
        generated = loaded.generate(ids, max_new_tokens=4, do_sample=False)
        assert generated.shape[1] > ids.shape[1]
    # A random model amplifies weight noise (q8_0 gives 0.015 here): measured 0.049 and 0.19.
    assert 0 < errors["q6_k"] < 0.08 and 0 < errors["q4_k_m"] < 0.3
    assert errors["q6_k"] < errors["q4_k_m"]
