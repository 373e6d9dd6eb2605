"""GGUF export per weight type: how far each file's logits are from the model it came from.

The model (a built-in alias, a directory or a .gguf file) is loaded in float32, written with
openrft's GGUF writer (`openrft.export.write_gguf`) as each type, loaded back with
transformers (`from_pretrained(gguf_file=...)`, which dequantizes), and run on three chat
prompts. Printed per type: the file size, mean |dlogit| / mean |logit|, the largest |dlogit|,
and the share of positions whose top token is unchanged.

    .venv/bin/python bench/gguf_quant.py [--model smollm2-135m-instruct]
                                         [--types float16 bfloat16 q8_0 ... q4_k_m q4_k]

The k-quant types (q6_k, q5_k_m, q5_k, q4_k_m, q4_k) are openrft's own quantizers
(openrft.gguf_kquants); the export prints each file's tensor types and the fallbacks.

`--weights` prints instead, per block type, the relative RMS error of the model's weight
matrices whose rows are whole 256-value super-blocks, quantized and dequantized with gguf's
own dequantizer (k-quants: fitted scales, and plain max-abs scales in parentheses).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gguf
import torch
from transformers import AutoModelForCausalLM

from openrft.data import encode_prompt
from openrft.export import write_gguf
from openrft.gguf_kquants import K_TYPES, QK_K, QT, quantize
from openrft.models.load import load_model

PROMPTS = (
    "Is this review positive or negative? 'a gorgeous, witty, seductive movie.'",
    "What is 12 times 7? Answer with a number.",
    "Write one sentence about the sea.",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    types = ["float16", "bfloat16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]
    types += ["q6_k", "q5_k_m", "q5_k", "q4_k_m", "q4_k"]
    parser.add_argument("--types", nargs="+", default=types)
    parser.add_argument("--weights", action="store_true", help="weight-level errors only")
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    model = model.float().eval()
    if args.weights:
        weight_errors(model, args.model)
        return
    prompts = [
        torch.tensor([encode_prompt([{"role": "user", "content": p}], tokenizer, "model")])
        for p in PROMPTS
    ]
    with torch.no_grad():
        reference = [model(ids).logits[0] for ids in prompts]
    print(f"{args.model}: {'type':<9}{'size MB':>9}{'mean rel.':>11}{'max abs.':>10}{'top-1':>8}")
    with tempfile.TemporaryDirectory(prefix="openrft-gguf-") as scratch:
        for kind in args.types:
            started = time.monotonic()
            path = write_gguf(model, tokenizer, Path(scratch) / f"model-{kind}.gguf", kind)
            back = AutoModelForCausalLM.from_pretrained(
                scratch, gguf_file=path.name, dtype=torch.float32
            ).eval()
            with torch.no_grad():
                logits = [back(ids).logits[0] for ids in prompts]
            pairs = list(zip(logits, reference, strict=True))
            relative = sum(float((o - r).abs().mean() / r.abs().mean()) for o, r in pairs)
            largest = max(float((o - r).abs().max()) for o, r in pairs)
            agree = sum(float((o.argmax(-1) == r.argmax(-1)).float().mean()) for o, r in pairs)
            size = path.stat().st_size / 1e6
            seconds = time.monotonic() - started
            print(f"{'':{len(args.model) + 2}}{kind:<9}{size:>9.1f}{relative / len(pairs):>11.4f}"
                  f"{largest:>10.3f}{agree / len(pairs):>8.3f}   ({seconds:.0f} s)",
                  flush=True)  # fmt: skip
            path.unlink()


def weight_errors(model, name: str) -> None:
    matrices = [p.detach().numpy() for p in model.parameters() if p.ndim == 2]
    matrices = [m for m in matrices if m.shape[-1] % QK_K == 0]
    count = sum(m.size for m in matrices)
    print(f"{name}: {len(matrices)} matrices ({count / 1e6:.1f}M weights) with 256-wide rows")
    for qtype in (QT.Q8_0, QT.Q6_K, QT.Q5_1, QT.Q5_K, QT.Q5_0, QT.Q4_1, QT.Q4_K, QT.Q4_0):
        errors = []
        for search in (True, False) if qtype in K_TYPES else (True,):
            err = sum(float(((gguf.quants.dequantize(quantize(m, qtype, search), qtype) - m) ** 2)
                            .sum()) for m in matrices)  # fmt: skip
            errors.append((err / sum(float((m**2).sum()) for m in matrices)) ** 0.5)
        naive = f"  (max-abs {errors[1]:.4f})" if len(errors) > 1 else ""
        print(f"  {qtype.name:<5} {errors[0]:.4f}{naive}", flush=True)


if __name__ == "__main__":
    main()
