"""Rollout generation throughput against the machine's compute bound, in one script.

For each model, dtype and batch size, openrft's rollout engine (HFEngine) samples 64 new
tokens per sequence, once with each decoder: "compact" (openrft.rollout.compact, the default
for Llama/Qwen2 models) and "transformers" (the model's own forward, the baseline). We report
generated tokens per second, the median of `--repeats` runs, the two decoders alternating.

The compute bound is measured in the same run: the best matrix-multiply rate over the dtypes
(bf16 wins on CPUs with AVX-512 BF16 or AMX, fp32 on those without), in FLOP/s, divided by
the model's FLOPs per token (2 x parameters: every weight is one multiply-add per token, the
tied LM head included; attention over these short contexts adds under 3% and is left out).
"of bound" is tokens/s divided by that bound.

    .venv/bin/python bench/generate.py [--models smollm2-135m-instruct ...] [--batches 1 8 64]
                                       [--new-tokens 64] [--dtypes bfloat16 float32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from openrft.data import encode_prompt
from openrft.models.load import load_model
from openrft.rollout.hf_engine import HFEngine
from openrft.types import SamplingParams

PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 8) -> float:
    """Sustained FLOP/s of a square matrix multiply in `dtype` on this machine's threads:
    the best of three timed runs (a shared machine's neighbours only ever slow it down)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        a @ b
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        rates.append(2 * size**3 * repeats / (time.perf_counter() - started))
    return max(rates)


def flops_per_token(model: torch.nn.Module) -> float:
    return 2.0 * sum(p.numel() for p in model.parameters())


def throughput(engine: HFEngine, prompt_ids: list[int], batch: int, new_tokens: int) -> float:
    params = SamplingParams(n=batch, temperature=1.0, max_new_tokens=new_tokens, seed=0)
    engine.generate([prompt_ids], SamplingParams(n=min(batch, 2), max_new_tokens=4))  # warm-up
    started = time.perf_counter()
    [group] = engine.generate([prompt_ids], params)
    elapsed = time.perf_counter() - started
    return sum(len(c.token_ids) for c in group) / elapsed


DECODERS = ("compact", "transformers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per decoder (median)")
    args = parser.parse_args()

    peaks = {name: matmul_peak(getattr(torch, name)) for name in args.dtypes}
    for name, peak in peaks.items():
        print(f"{name} matmul peak: {peak / 1e9:.0f} GFLOP/s ({torch.get_num_threads()} threads)")
    best = max(peaks, key=peaks.get)
    print(f"compute bound from the {best} peak\n")
    print(
        f"{'model':<30}{'dtype':<10}{'batch':>6}{'compact':>10}{'transformers':>14}"
        f"{'speedup':>9}{'bound':>8}{'of bound':>10}"
    )
    for model_name in args.models:
        for dtype in args.dtypes:
            model, tokenizer = load_model(model_name, dtype)
            engines = {
                name: HFEngine(model, tokenizer, batch_size=max(args.batches), decoder=name)
                for name in DECODERS
            }
            prompt_ids = encode_prompt([{"role": "user", "content": PROMPT}], tokenizer)
            bound = peaks[best] / flops_per_token(model)
            for batch in args.batches:
                runs: dict[str, list[float]] = {name: [] for name in DECODERS}
                for _ in range(args.repeats):
                    for name, engine in engines.items():
                        runs[name].append(throughput(engine, prompt_ids, batch, args.new_tokens))
                rate = {name: statistics.median(values) for name, values in runs.items()}
                print(
                    f"{model_name:<30}{dtype:<10}{batch:>6}{rate['compact']:>10.1f}"
                    f"{rate['transformers']:>14.1f}"
                    f"{rate['compact'] / rate['transformers']:>8.2f}x"
                    f"{bound:>8.0f}{rate['compact'] / bound:>10.1%}",
                    flush=True,
                )
            del model, engines


if __name__ == "__main__":
    main()
