"""Rollout generation throughput against the machine's compute bound, in one script.

For each model, dtype and batch size, openrft's rollout engine (HFEngine) samples 64 new
tokens per sequence, once with each decoder: "compact" (openrft.rollout.compact, the default
for Llama/Qwen2 models) and "transformers" (the model's own forward, the baseline). We report
generated tokens per second, the median of `--repeats` runs, the two decoders alternating.

The compute bound is measured in the same run: the best matrix-multiply rate over the dtypes
(bf16 wins on CPUs with AVX-512 BF16 or AMX, fp32 on those without), in FLOP/s, divided by
the model's FLOPs per token (2 x the weights a token is multiplied by: the LM head included,
an untied input embedding left out as a lookup; attention over these short contexts adds
under 3% and is left out). The peaks are measured again after each model and the highest
rate seen is used, since a shared machine's neighbours only ever slow a measurement down.
"of bound" is tokens/s divided by that bound; the table is printed at the end.

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
    """2 x the weights a token is multiplied by: every parameter (tied ones counted once),
    less an untied input embedding, which is a lookup (Qwen2.5-0.5B: 494M of its 630M)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    if embedding is not model.get_output_embeddings().weight:
        total -= embedding.numel()
    return 2.0 * total


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

    # Both peaks, whatever --dtypes says: the bound is the machine's, not the run's.
    peaks = {name: [matmul_peak(getattr(torch, name))] for name in ("bfloat16", "float32")}
    rows = []  # (model, dtype, batch, compact tok/s, transformers tok/s, FLOPs per token)
    for model_name in args.models:
        for dtype in args.dtypes:
            model, tokenizer = load_model(model_name, dtype)
            engines = {
                name: HFEngine(model, tokenizer, batch_size=max(args.batches), decoder=name)
                for name in DECODERS
            }
            prompt_ids = encode_prompt([{"role": "user", "content": PROMPT}], tokenizer)
            for batch in args.batches:
                runs: dict[str, list[float]] = {name: [] for name in DECODERS}
                for _ in range(args.repeats):
                    for name, engine in engines.items():
                        runs[name].append(throughput(engine, prompt_ids, batch, args.new_tokens))
                rate = {name: statistics.median(values) for name, values in runs.items()}
                rows.append((model_name, dtype, batch, *rate.values(), flops_per_token(model)))
                print(f"measured {rows[-1][:5]}", flush=True)
            del model, engines
            for name, values in peaks.items():
                values.append(matmul_peak(getattr(torch, name)))

    for name, values in peaks.items():
        runs_text = " ".join(f"{v / 1e9:.0f}" for v in values)
        print(f"{name} matmul peak: {max(values) / 1e9:.0f} GFLOP/s (runs: {runs_text})")
    best = max(peaks, key=lambda name: max(peaks[name]))
    peak = max(peaks[best])
    print(f"compute bound from the {best} peak, {torch.get_num_threads()} threads\n")
    print(
        f"{'model':<30}{'dtype':<10}{'batch':>6}{'compact':>10}{'transformers':>14}"
        f"{'speedup':>9}{'bound':>8}{'of bound':>10}"
    )
    for model_name, dtype, batch, compact, transformers, flops in rows:
        bound = peak / flops
        print(
            f"{model_name:<30}{dtype:<10}{batch:>6}{compact:>10.1f}{transformers:>14.1f}"
            f"{compact / transformers:>8.2f}x{bound:>8.0f}{compact / bound:>10.1%}"
        )


if __name__ == "__main__":
    main()
