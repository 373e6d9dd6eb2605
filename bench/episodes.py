"""Multi-turn episodes: KV continuation against re-rendering and re-prefilling every turn.

G episodes of exactly `--turns` assistant turns each (a turn ends at the end-of-turn token or
the cap, and the episode goes on either way, on both sides), through openrft's in-process
engine (HFEngine, the compact decoder where the model allows). After every assistant turn a
tool-result-like user message of about `--env-tokens` tokens answers. Two sides, the same
model, engine, prompts and sampling settings, run alternately `--repeats` times:

- openrft: the engine's `generate_episodes`, each episode continued from its own KV cache;
  only the environment's new tokens are rendered (the bridge) and prefilled.
- re-prefill (`--baseline same`: the same engine; `plain`: transformers' own forward, as
  TRL's tool loop generates through `model.generate`): after every turn the conversation is
  re-rendered through the chat template, tokenized, and generated from as a fresh prompt
  (its whole history prefilled again), one turn for every live episode at a time.

Printed: sampled tokens per second of each side (the model's own tokens, the work that
matters), total wall time, and the ratio. The issue's goal is 3x or more.

    .venv/bin/python bench/episodes.py [--model smollm2-135m-instruct] [--group 8]
                                       [--turns 5] [--env-tokens 30] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import Future
from dataclasses import replace

import torch

from openrft.data import encode_prompt
from openrft.models.load import load_model
from openrft.rollout.bridge import ChatBridge
from openrft.rollout.episodes import Continuation
from openrft.rollout.hf_engine import HFEngine
from openrft.types import Completion, SamplingParams

WORDS = (
    "result", "status", "ok", "value", "computed", "table", "rows", "found",
    "matched", "entries", "returned", "records", "lookup", "field", "index", "cache",
)  # fmt: skip
QUESTION = (
    "You are solving a task step by step with a tool. Describe your next step in one or two "
    "sentences, then wait for the tool's output."
)


def tool_message(turn: int, words: int) -> dict[str, str]:
    text = " ".join(WORDS[(turn + i) % len(WORDS)] for i in range(words))
    return {"role": "user", "content": f"Tool output: {text}. Continue."}


def run_openrft(engine, tokenizer, prompt, params, turns, words) -> tuple[int, float]:
    """Episodes through the engine's KV continuation; after every turn the tool message's
    tokens come from the bridge (only the new message is rendered)."""
    bridge = ChatBridge(tokenizer)
    counts: dict[int, int] = {}
    sampled = 0

    def respond(seq: int, turn: Completion) -> Future:
        nonlocal sampled
        sampled += len(turn.token_ids)
        counts[seq] = counts.get(seq, 0) + 1
        future: Future = Future()
        if counts[seq] >= turns:
            future.set_result(None)
            return future
        last = turn.token_ids[-1] if turn.token_ids else None
        end = tokenizer.decode([last]) if last in engine.end_token_ids else ""
        ids = bridge.token_ids([tool_message(counts[seq], words)], end)
        future.set_result(Continuation(tuple(ids), params.max_new_tokens))
        return future

    started = time.monotonic()
    engine.generate_episodes([prompt], params, respond)
    return sampled, time.monotonic() - started


def run_reprefill(engine, tokenizer, question, params, turns, words) -> tuple[int, float]:
    """Every turn: re-render each conversation, tokenize it, generate one turn from it."""
    started = time.monotonic()
    conversations = [[dict(m) for m in question] for _ in range(params.n)]
    sampled = 0
    for turn in range(turns):
        prompts = [encode_prompt(c, tokenizer, "model") for c in conversations]
        one = SamplingParams(
            n=1, temperature=params.temperature, max_new_tokens=params.max_new_tokens,
            seed=params.seed + turn,
        )  # fmt: skip
        outputs = engine.generate(prompts, one)
        for conversation, (completion,) in zip(conversations, outputs, strict=True):
            sampled += len(completion.token_ids)
            conversation.append({"role": "assistant", "content": completion.text})
            conversation.append(tool_message(turn + 1, words))
    return sampled, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--group", type=int, default=8, help="episodes (G)")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--env-tokens", type=int, default=30, help="about this many per answer")
    parser.add_argument("--new-tokens", type=int, default=48, help="cap per assistant turn")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--baseline",
        default="same",
        choices=["same", "plain"],
        help="the re-prefill side's engine: the same one as openrft's (isolates the KV "
        "continuation), or the plain transformers forward and DynamicCache (what TRL's tool "
        "loop runs through model.generate)",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_model(args.model, args.dtype)
    engine = HFEngine(model.eval(), tokenizer, batch_size=64)
    baseline = engine
    if args.baseline == "plain":
        baseline = HFEngine(model, tokenizer, batch_size=64, fast_paths=False)
    words = max(1, args.env_tokens - 8)  # the template and "Tool output: ..." add ~8 tokens
    question = ({"role": "user", "content": QUESTION},)
    prompt = encode_prompt(question, tokenizer, "model")
    params = SamplingParams(n=args.group, temperature=1.0, max_new_tokens=args.new_tokens)
    sides: dict[str, list[tuple[int, float]]] = {"openrft": [], "re-prefill": []}
    print(
        f"{engine.description} (re-prefill: {baseline.description}); G={args.group}, "
        f"{args.turns} turns, ~{args.env_tokens} environment tokens a turn, "
        f"<= {args.new_tokens} new tokens a turn"
    )
    run_openrft(engine, tokenizer, prompt, params, 2, words)  # warm-up
    for repeat in range(args.repeats):
        seeded = replace(params, seed=repeat)
        sides["openrft"].append(run_openrft(engine, tokenizer, prompt, seeded, args.turns, words))
        sides["re-prefill"].append(
            run_reprefill(baseline, tokenizer, question, seeded, args.turns, words)
        )
        for name, runs in sides.items():
            tokens, wall = runs[-1]
            print(f"  run {repeat + 1} {name:>10}: {tokens} sampled tokens in {wall:.2f} s")
    rates = {
        name: statistics.median(tokens / wall for tokens, wall in runs)
        for name, runs in sides.items()
    }
    print()
    print(f"{'side':>12} {'sampled tok/s':>14} {'median wall s':>14}")
    for name, runs in sides.items():
        wall = statistics.median(w for _, w in runs)
        print(f"{name:>12} {rates[name]:>14.1f} {wall:>14.2f}")
    ratio = rates["openrft"] / rates["re-prefill"]
    print(f"\nopenrft (KV continuation) vs re-render + re-prefill: {ratio:.2f}x the tokens/s")


if __name__ == "__main__":
    main()
