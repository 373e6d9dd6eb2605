"""GRPO step time: openrft against TRL's GRPOTrainer at identical settings, in one script.

Settings (both sides): SmolLM2-135M-Instruct (fp32), LoRA r16 / alpha 32 on all linear
layers, 8 SST-2 prompts x 8 completions of at most 16 new tokens, temperature 1, no KL,
one optimisation pass per batch, clip 0.2/0.2, token-mean loss, group-std advantages,
AdamW (0.9, 0.999), constant learning rate 2e-4, grad-norm clip 1.0, seed 0, all cores.
The reward is the exact SST-2 label after normalisation (openrft's `exact_label`).

A third side, openrft-bf16, runs openrft with `model.dtype = "bfloat16"` (the frozen base
computes in bf16; LoRA adapters and Adam state stay float32) and `rollout.dtype = "bfloat16"`
(rollouts from a merged bf16 copy): openrft's own speed settings, everything else equal.

A fourth side, openrft-plain, runs openrft with `train.fast_paths = "off"`: the plain path
only (a padded forward through transformers and peft for the update, the model's own forward
with transformers' KV cache for rollouts), what a model no fast path applies to gets.

A fifth side, openrft-vllm, runs openrft with `rollout.engine = "vllm"`: rollouts from a vLLM
server the job starts (`--vllm-command`; by default the CPU build `make vllm` puts in
.venv-vllm), the LoRA adapter hot-loaded and probed after every update. The server's start
is not part of a step; its memory is (the peak RSS adds the server's, a child process).

Each side runs in its own subprocess, so its peak RSS is its own. Prints, per side: median
seconds per step over the measured steps (the first step is a warm-up and not counted),
completion tokens per second, peak RSS and the reward per step, openrft's median rollout and
update seconds; then openrft / TRL ratios. The bf16 side pays only on CPUs with AVX-512 BF16
or AMX (bench/generate.py prints both matmul peaks); skip it elsewhere with --sides.

    .venv/bin/pip install -e '.[bench]'     # TRL is a bench extra, not a dependency
    .venv/bin/python bench/grpo_step.py [--steps 6] [--sides openrft trl] [--vllm-command CMD]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS, GROUP, MAX_NEW, LR, SEED = 8, 8, 16, 2e-4, 0
SIDES = ("openrft", "openrft-bf16", "openrft-plain", "openrft-vllm", "trl")
LOCAL_VLLM = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"


# openrft's own speed settings, run as a third side: bf16 compute for the frozen base (the
# LoRA adapters and Adam state stay float32) and rollouts from a merged bf16 copy.
BF16 = ['model.dtype="bfloat16"', 'rollout.dtype="bfloat16"']
# The plain path only (train.fast_paths = "off"): what the fast paths buy.
PLAIN = ['train.fast_paths="off"']


def run_openrft(steps: int, extra: tuple[str, ...] = ()) -> dict:
    from openrft.config import load_config
    from openrft.train.loop import train

    config = load_config(
        None,
        [
            'model.name="smollm2-135m-instruct"',
            'data.train_file="builtin:sst2/train"',
            'data.validation_file="builtin:sst2/validation"',
            'reward.grader="exact_label"',
            "lora.rank=16",
            "lora.alpha=32",
            f"rollout.samples_per_prompt={GROUP}",
            f"rollout.max_new_tokens={MAX_NEW}",
            f"train.prompts_per_step={PROMPTS}",
            "train.micro_batch_size=64",
            f"train.max_steps={steps + 1}",
            f"train.learning_rate={LR}",
            "train.adam_beta2=0.999",
            f"train.seed={SEED}",
            "algo.clip_high=0.2",
            "eval.interval=0",
            "eval.max_prompts=1",
            "eval.baseline_prompts=0",  # TRL has no Step-0 check; it is not part of a step
            "checkpoint.interval=0",
            *extra,
        ],
    )
    with tempfile.TemporaryDirectory() as tmp:
        train(config, Path(tmp) / "run", show_progress=False)
        lines = (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines][1:]  # step 0 is the validation line
    return {
        "step_s": [r["time/step_s"] for r in records],
        "rollout_s": [r["time/rollout_s"] for r in records],
        "update_s": [r["time/update_s"] for r in records],
        "completion_tokens": [r["completion/length_mean"] * PROMPTS * GROUP for r in records],
        "reward": [r["reward/mean"] for r in records],
    }


def run_trl(steps: int) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from openrft.data import load_examples, resolve_data_path
    from openrft.models.load import resolve_model_dir
    from openrft.rewards.exact_label import normalize_label

    rows = load_examples(resolve_data_path("builtin:sst2/train"))
    dataset = Dataset.from_list(
        [{"prompt": [dict(m) for m in r.messages], "label": r.reference_answer} for r in rows]
    )

    def exact_label(completions, label, **_):
        return [
            float(normalize_label(c[0]["content"]) == normalize_label(y))
            for c, y in zip(completions, label, strict=True)
        ]

    class Timer(TrainerCallback):
        def __init__(self):
            self.step_s, self.started = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_s.append(time.perf_counter() - self.started)

    class Logger(TrainerCallback):
        def __init__(self):
            self.logs: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                self.logs.append(dict(logs))

    timer, logger = Timer(), Logger()
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp,
            use_cpu=True,
            bf16=False,
            seed=SEED,
            learning_rate=LR,
            lr_scheduler_type="constant",
            per_device_train_batch_size=PROMPTS * GROUP,
            num_generations=GROUP,
            max_completion_length=MAX_NEW,
            temperature=1.0,
            beta=0.0,
            num_iterations=1,
            epsilon=0.2,
            loss_type="dapo",
            scale_rewards="group",
            max_steps=steps + 1,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_dropout=True,
        )
        trainer = GRPOTrainer(
            model=str(resolve_model_dir("smollm2-135m-instruct")),
            reward_funcs=exact_label,
            args=args,
            train_dataset=dataset,
            peft_config=LoraConfig(
                r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"
            ),
            callbacks=[timer, logger],
        )
        trainer.train()
    return {
        "step_s": timer.step_s,
        "completion_tokens": [
            float(log["completions/mean_length"]) * PROMPTS * GROUP for log in logger.logs
        ],
        "reward": [float(log["reward"]) for log in logger.logs],
    }


def vllm_overrides(command: str) -> tuple[str, ...]:
    """openrft-vllm: rollouts from a vLLM server the job starts with `command`."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; the CPU build's KV cache
    return (
        'rollout.engine="vllm"',
        f"vllm.command={json.dumps(command)}",
        "vllm.max_model_len=1024",
        # One scheduler step holds a rollout step's 64 prompts: the CPU build crashes on a
        # seeded request prefilled in chunks (openrft.rollout.vllm_server.KNOWN_FAILURES).
        'vllm.extra_args=["--max-num-batched-tokens", "16384"]',
    )


def side(name: str, steps: int, out: Path, vllm_command: str) -> None:
    if name == "trl":
        result = run_trl(steps)
    elif name == "openrft-vllm":
        result = run_openrft(steps, vllm_overrides(vllm_command))
    else:
        extra = {"openrft-bf16": BF16, "openrft-plain": PLAIN}.get(name, [])
        result = run_openrft(steps, tuple(extra))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if name == "openrft-vllm":  # the vLLM server (the largest child) holds its own copy
        peak_kb += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["peak_rss_gb"] = peak_kb / 1024**2
    out.write_text(json.dumps(result))


def summarize(result: dict) -> dict:
    measured = result["step_s"][1:]  # the first step warms up caches and kernels
    tokens = result["completion_tokens"][1:]
    return {
        "median_step_s": statistics.median(measured),
        "tokens_per_s": sum(tokens) / sum(measured),
        "peak_rss_gb": result["peak_rss_gb"],
        "reward": result["reward"],
        # openrft logs where a step's time goes; TRL's callbacks do not separate it.
        "split": {
            part: statistics.median(result[part][1:])
            for part in ("rollout_s", "update_s")
            if part in result
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="measured steps (after 1 warm-up)")
    parser.add_argument(
        "--sides",
        nargs="+",
        choices=SIDES,
        # openrft-vllm by default only where `make vllm` built vLLM's environment
        default=[s for s in SIDES if s != "openrft-vllm" or LOCAL_VLLM.exists()],
        help="sides to run (trl last)",
    )
    parser.add_argument(
        "--vllm-command",
        default=f"{shlex.quote(str(LOCAL_VLLM))} -m vllm.entrypoints.openai.api_server",
        help="how openrft-vllm starts vLLM (default: the .venv-vllm that make vllm builds)",
    )
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        side(args.side, args.steps, args.out, args.vllm_command)
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in [side for side in SIDES if side in args.sides]:
            out = Path(tmp) / f"{name}.json"
            print(f"running {name} ({args.steps} + 1 steps)...", flush=True)
            command = [
                sys.executable,
                __file__,
                "--side",
                name,
                "--steps",
                str(args.steps),
                "--out",
                str(out),
                "--vllm-command",
                args.vllm_command,
            ]
            done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if done.returncode != 0:  # the side's own error, not only its exit status
                sys.exit(f"{name} failed:\n{done.stderr.decode(errors='replace')[-4000:]}")
            results[name] = summarize(json.loads(out.read_text()))
    print(f"\n{'':<14}{'s/step':>10}{'tokens/s':>11}{'peak RSS GB':>13}   reward per step")
    for name, r in results.items():
        rewards = " ".join(f"{x:.2f}" for x in r["reward"])
        print(
            f"{name:<14}{r['median_step_s']:>10.2f}{r['tokens_per_s']:>11.1f}"
            f"{r['peak_rss_gb']:>13.2f}   {rewards}"
        )
    for name, r in results.items():
        if r["split"]:
            parts = ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in r["split"].items())
            print(f"{name}: median {parts}")
    theirs = results.get("trl")
    print()
    for name in [side for side in SIDES[:-1] if side in results and theirs]:
        ours = results[name]
        print(
            f"{name} vs TRL: {theirs['median_step_s'] / ours['median_step_s']:.1f}x faster per "
            f"step, {ours['tokens_per_s'] / theirs['tokens_per_s']:.1f}x the completion tokens/s, "
            f"{ours['peak_rss_gb'] / theirs['peak_rss_gb']:.2f}x the peak RSS; mean reward "
            f"{statistics.fmean(ours['reward']):.3f} vs {statistics.fmean(theirs['reward']):.3f}"
        )


if __name__ == "__main__":
    main()
