"""The same job on a CUDA GPU (model.device). Marked gpu: skipped where torch sees none, so
CI (CPU only) skips them; a lent GPU machine runs them (bench/gpu_check.sh)."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_model import build_tiny_tokenizer
from transformers import AutoModelForCausalLM

from openrft.errors import ModelError
from openrft.rollout.hf_engine import HFEngine
from openrft.train.loop import train
from openrft.train.policy import resolve_device
from openrft.types import SamplingParams

from .helpers import tiny_job

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_picks_the_cpu_without_a_gpu_and_cuda_fails_clearly():
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
        return
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ModelError, match="model.device = 'cuda', but torch sees no CUDA GPU"):
        resolve_device("cuda")


@pytest.mark.gpu
@gpu
def test_a_job_trains_on_the_gpu(tmp_path, tiny_model_dir):
    config = tiny_job(tmp_path, tiny_model_dir, "model.device=cuda", "train.max_steps=2")
    summary = train(config, tmp_path / "run", show_progress=False)
    assert summary.status == "completed"
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [0, 1, 2]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_both_decoders_agree_on_the_gpu(tiny_model_dir, dtype):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype).to("cuda")
    tokenizer = build_tiny_tokenizer()
    prompts = [tokenizer.encode("the movie was"), tokenizer.encode("what is 12 plus")]
    greedy = SamplingParams(n=2, temperature=0.0, max_new_tokens=10)
    compact = HFEngine(model, tokenizer, decoder="compact").generate(prompts, greedy)
    reference = HFEngine(model, tokenizer, decoder="transformers").generate(prompts, greedy)
    if dtype == torch.float32:
        assert compact == reference
    else:  # bf16 kernels round differently: most tokens still agree
        same = sum(
            a == b
            for ga, gb in zip(compact, reference, strict=True)
            for a, b in zip(ga, gb, strict=True)
        )
        assert same >= 2
