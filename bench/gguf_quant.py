"""GGUF export per weight type: how far each file's logits are from the model it came from.

The model (a built-in alias, a directory or a .gguf file) is loaded in float32, written with
openrft's GGUF writer (`openrft.export.write_gguf`) as each type, loaded back with
transformers (`from_pretrained(gguf_file=...)`, which dequantizes), and run on three chat
prompts. Printed per type: the file size, mean |dlogit| / mean |logit|, the largest |dlogit|,
and the share of positions whose top token is unchanged.

    .venv/bin/python bench/gguf_quant.py [--model smollm2-135m-instruct]
                                         [--types float16 bfloat16 q8_0 q5_1 q5_0 q4_1 q4_0]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from openrft.data import encode_prompt
from openrft.export import write_gguf
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
    parser.add_argument("--types", nargs="+", default=types)
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    model = model.float().eval()
    prompts = [
        torch.tensor([encode_prompt([{"role": "user", "content": p}], tokenizer, "model")])
        for p in PROMPTS
    ]
    with torch.no_grad():
        reference = [model(ids).logits[0] for ids in prompts]
    print(f"{args.model}: {'type':<9}{'size MB':>9}{'mean rel.':>11}{'max abs.':>10}{'top-1':>8}")
    with tempfile.TemporaryDirectory(prefix="openrft-gguf-") as scratch:
        for kind in args.types:
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
            print(f"{'':{len(args.model) + 2}}{kind:<9}{size:>9.1f}{relative / len(pairs):>11.4f}"
                  f"{largest:>10.3f}{agree / len(pairs):>8.3f}", flush=True)  # fmt: skip
            path.unlink()


if __name__ == "__main__":
    main()
