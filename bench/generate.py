"""Rollout generation throughput against the machine's compute bound, in one script.

For each model and batch size, openrft's rollout engine (HFEngine) samples 64 new tokens per
sequence and we report generated tokens per second. The compute bound is measured in the same
run: a bf16 (and fp32) matrix-multiply peak in FLOP/s, divided by the model's FLOPs per token
(2 x parameters: every weight is one multiply-add per token, the tied LM head included;
attention over these short contexts adds under 3% and is left out). The ratio printed is
tokens/s divided by that bound.

    .venv/bin/python bench/generate.py [--models smollm2-135m-instruct ...] [--batches 1 8 64]
                                       [--new-tokens 64] [--dtypes bfloat16 float32]
"""

from __future__ import annotations

import argparse
import time

import torch

from openrft.data import encode_prompt
from openrft.models.load import load_model
from openrft.rollout.hf_engine import HFEngine
from openrft.types import SamplingParams

PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 8) -> float:
    """Sustained FLOP/s of a square matrix multiply in `dtype` on this machine's threads."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def flops_per_token(model: torch.nn.Module) -> float:
    return 2.0 * sum(p.numel() for p in model.parameters())


def throughput(engine: HFEngine, prompt_ids: list[int], batch: int, new_tokens: int) -> float:
    params = SamplingParams(n=batch, temperature=1.0, max_new_tokens=new_tokens, seed=0)
    engine.generate([prompt_ids], SamplingParams(n=min(batch, 2), max_new_tokens=4))  # warm-up
    started = time.perf_counter()
    [group] = engine.generate([prompt_ids], params)
    elapsed = time.perf_counter() - started
    return sum(len(c.token_ids) for c in group) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    args = parser.parse_args()

    peaks = {name: matmul_peak(getattr(torch, name)) for name in args.dtypes}
    for name, peak in peaks.items():
        print(f"{name} matmul peak: {peak / 1e9:.0f} GFLOP/s ({torch.get_num_threads()} threads)")
    print(
        f"\n{'model':<30}{'dtype':<10}{'batch':>6}{'tokens/s':>10}"
        f"{'bound tok/s':>13}{'of bound':>10}"
    )
    for model_name in args.models:
        for dtype in args.dtypes:
            model, tokenizer = load_model(model_name, dtype)
            engine = HFEngine(model, tokenizer, batch_size=max(args.batches))
            prompt_ids = encode_prompt([{"role": "user", "content": PROMPT}], tokenizer)
            bound = peaks["bfloat16" if "bfloat16" in peaks else dtype] / flops_per_token(model)
            for batch in args.batches:
                rate = throughput(engine, prompt_ids, batch, args.new_tokens)
                print(
                    f"{model_name:<30}{dtype:<10}{batch:>6}{rate:>10.1f}"
                    f"{bound:>13.0f}{rate / bound:>10.1%}"
                )
            del model, engine


if __name__ == "__main__":
    main()
