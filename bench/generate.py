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

A decode step also reads every weight once, whatever the batch, so below a few hundred rows it
is bound by memory bandwidth, not by compute. The run measures that too (the best of a few
large copies) and prints the roofline, min(compute bound, bandwidth x batch / weight bytes),
with "of roofline": that is how close a decoder can come on this machine. (SmolLM2 in bf16 at
batch 64 reads 270 MB a step; at 10 GB/s that caps it near 2,400 tokens/s, below the compute
bound of an AMX CPU.)

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


def memory_bandwidth(megabytes: int = 512) -> float:
    """Bytes per second a large copy moves (read plus write): the best of three."""
    source = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32).fill_(1.0)
    target = torch.empty_like(source)
    target.copy_(source)
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        target.copy_(source)
        rates.append(2 * source.nbytes / (time.perf_counter() - started))
    return max(rates)


def weight_bytes(model: torch.nn.Module, dtype: torch.dtype) -> float:
    """Bytes of weights a decode step reads in `dtype`: flops_per_token's weights."""
    return flops_per_token(model) / 2 * torch.finfo(dtype).bits / 8


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
    bandwidths = [memory_bandwidth()]
    rows = []  # (model, dtype, batch, compact tok/s, transformers tok/s, FLOPs, weight bytes)
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
                rows.append(
                    (
                        model_name,
                        dtype,
                        batch,
                        *rate.values(),
                        flops_per_token(model),
                        weight_bytes(model, getattr(torch, dtype)),
                    )
                )
                print(f"measured {rows[-1][:5]}", flush=True)
            del model, engines
            for name, values in peaks.items():
                values.append(matmul_peak(getattr(torch, name)))
            bandwidths.append(memory_bandwidth())

    for name, values in peaks.items():
        runs_text = " ".join(f"{v / 1e9:.0f}" for v in values)
        print(f"{name} matmul peak: {max(values) / 1e9:.0f} GFLOP/s (runs: {runs_text})")
    best = max(peaks, key=lambda name: max(peaks[name]))
    peak = max(peaks[best])
    print(f"compute bound from the {best} peak, {torch.get_num_threads()} threads")
    bandwidth = max(bandwidths)
    runs_text = " ".join(f"{b / 1e9:.1f}" for b in bandwidths)
    print(f"memory bandwidth (copy): {bandwidth / 1e9:.1f} GB/s (runs: {runs_text})\n")
    print(
        f"{'model':<30}{'dtype':<10}{'batch':>6}{'compact':>10}{'transformers':>14}"
        f"{'speedup':>9}{'bound':>8}{'of bound':>10}{'roofline':>10}{'of roofline':>13}"
    )
    for model_name, dtype, batch, compact, transformers, flops, weights in rows:
        bound = peak / flops
        roofline = min(bound, bandwidth * batch / weights)
        print(
            f"{model_name:<30}{dtype:<10}{batch:>6}{compact:>10.1f}{transformers:>14.1f}"
            f"{compact / transformers:>8.2f}x{bound:>8.0f}{compact / bound:>10.1%}"
            f"{roofline:>10.0f}{compact / roofline:>13.1%}"
        )


if __name__ == "__main__":
    main()
