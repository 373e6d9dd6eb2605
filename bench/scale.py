"""Scale-out pieces, measured: grading hidden behind generation, and rollout workers.

1. A slow grader. A real HTTP endpoint speaking Bedrock's reward-Lambda contract (`openrft
   grader serve`, in its own process) answers every request after `--delay` seconds; each
   request carries one group (G samples), as a per-group Lambda would. The same job (SmolLM2
   on GSM8K problems, G samples of up to `--max-new-tokens`) runs `--steps` steps with:
     instant      the endpoint without the delay: the step the others are compared with
     serial       the delay, groups graded one after another once all are generated
                  (reward.pipeline = false; the grader's concurrency 1)
     pipelined    each group graded as soon as it is generated, one at a time
     4 workers    pipelined, four groups at once (cluster.reward_workers = 4, threads)
     4 Ray        pipelined, four grader actors on a local Ray (cluster.backend = "ray")
   Printed per side: step time, time/reward_s (some grading running), time/reward_exposed_s
   (grading after generation ended), exposed/reward and step/instant. The goals (issue 18):
   exposed <= 20% of reward time, and a step <= 1.2x the instant grader's.

2. Rollout workers. The same prompts sampled by Ray rollout workers: 1 worker with every
   core, then 2 workers with half the cores each (on one machine they share its cores, so
   this measures the overhead of splitting, not a speed-up). From the measured pieces, a
   PROJECTION (a model, not a measurement) of the step on N machines: generation at the
   measured per-worker rate split N ways, plus the measured update and weight-sync times;
   synchronous (the sum) and one step off-policy (generation beside the update).

    .venv/bin/python bench/scale.py [--delay 1.0] [--steps 2] [--prompts 8] [--group 8]
                                    [--max-new-tokens 96] [--skip-ray]
                                    [--skip-grading --update-s S]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from openrft.config import load_config
from openrft.data import encode_prompt
from openrft.rollout.vllm_server import free_port
from openrft.train.engines import sampling_params
from openrft.train.loop import train
from openrft.train.policy import build_policy

HANDLER = """
import os, re, time

DELAY = float(os.environ.get("BENCH_GRADER_DELAY_S", "0"))


def lambda_handler(event, context):
    time.sleep(DELAY)  # one request, one delay: a slow Lambda or LLM judge
    results = []
    for sample in event:
        reply = sample["messages"][-1]["content"]
        numbers = re.findall(r"-?\\d+(?:\\.\\d+)?", reply.replace(",", ""))
        reference = str(sample["metadata"].get("reference_answer", "")).strip()
        score = float(bool(numbers) and numbers[-1] == reference)
        results.append({"id": sample["id"], "aggregate_reward_score": score})
    return results
"""


def serve_grader(directory: Path, delay: float) -> tuple[subprocess.Popen, str]:
    handler = directory / f"slow_{delay:g}.py"
    handler.write_text(HANDLER)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "openrft.cli", "grader", "serve", str(handler),
         "--port", str(port)],
        env={**os.environ, "BENCH_GRADER_DELAY_S": str(delay)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the grader endpoint did not start")


def job_overrides(args: argparse.Namespace, url: str, concurrency: int) -> list[str]:
    grader = (
        f'{{type = "lambda", url = "{url}", batch_size = {args.group}, '
        f"concurrency = {concurrency}, timeout_s = 600}}"
    )
    return [
        'model.name="smollm2-135m-instruct"',
        'data.train_file="builtin:gsm8k/train"',
        'data.validation_file="builtin:gsm8k/validation"',
        "data.max_prompt_tokens=512",
        f"rollout.samples_per_prompt={args.group}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"rollout.batch_size={2 * args.group}",  # two prompts a chunk: groups finish in turn
        f"reward.grader={grader}",
        f"train.prompts_per_step={args.prompts}",
        f"train.max_steps={args.steps}",
        "train.micro_batch_size=16",
        "eval.max_prompts=2",
        "eval.samples_per_prompt=1",
        "eval.interval=0",
        "eval.baseline_prompts=0",
        "checkpoint.interval=0",
    ]


def run_side(args, directory: Path, url: str, name: str, extra: list[str], concurrency: int):
    config = load_config(None, job_overrides(args, url, concurrency) + extra)
    run_dir = directory / name.replace(" ", "-")
    train(config, run_dir, show_progress=False)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [r for r in map(json.loads, lines) if r.get("step", 0) > 0 and "time/step_s" in r]
    keys = ("time/step_s", "time/reward_s", "time/reward_exposed_s", "time/rollout_s",
            "time/update_s")  # fmt: skip
    return {key: statistics.fmean(r[key] for r in steps) for key in keys}


def grading(args: argparse.Namespace, directory: Path) -> dict[str, dict[str, float]]:
    sides = {}
    instant, instant_url = serve_grader(directory, 0.0)
    slow, slow_url = serve_grader(directory, args.delay)
    try:
        sides["instant"] = run_side(args, directory, instant_url, "instant", [], 4)
        serial = ["reward.pipeline=false", "cluster.reward_workers=1"]
        sides["serial"] = run_side(args, directory, slow_url, "serial", serial, 1)
        sides["pipelined"] = run_side(args, directory, slow_url, "pipelined",
                                      ["cluster.reward_workers=1"], 1)  # fmt: skip
        sides["4 workers"] = run_side(args, directory, slow_url, "4 workers",
                                      ["cluster.reward_workers=4"], 1)  # fmt: skip
        if not args.skip_ray:
            sides["4 Ray"] = run_side(args, directory, slow_url, "4 Ray",
                                      ["cluster.backend=ray", "cluster.reward_workers=4",
                                       "cluster.rollout_workers=1", "cluster.worker_cpus=2"],
                                      1)  # fmt: skip
    finally:
        instant.kill()
        slow.kill()
    base = sides["instant"]["time/step_s"]
    print(f"\n1. A grader with {args.delay:g} s per request (one request per group of "
          f"{args.group}), {args.prompts} groups a step, mean of {args.steps} steps")  # fmt: skip
    print(f"{'side':<11}{'step s':>9}{'rollout s':>11}{'reward s':>10}{'exposed s':>11}"
          f"{'exposed/reward':>16}{'step/instant':>14}")  # fmt: skip
    for name, side in sides.items():
        reward, exposed = side["time/reward_s"], side["time/reward_exposed_s"]
        share = exposed / reward if reward > 0 else 0.0
        print(f"{name:<11}{side['time/step_s']:>9.2f}{side['time/rollout_s']:>11.2f}"
              f"{reward:>10.2f}{exposed:>11.2f}{share:>15.0%}"
              f"{side['time/step_s'] / base:>13.2f}x")  # fmt: skip
    return sides


def rollout_workers(args: argparse.Namespace, update_s: float) -> None:
    import ray

    from openrft.train.ray_workers import RayRolloutPool

    cores = os.cpu_count() or 2
    base = load_config(None, [
        'model.name="smollm2-135m-instruct"', 'data.train_file="builtin:gsm8k/train"',
        f"rollout.samples_per_prompt={args.group}", "rollout.max_new_tokens=64",
    ])  # fmt: skip
    policy = build_policy(base)
    questions = [f"A shop sells {n} apples a day for {n + 3} days. How many apples is that?"
                 for n in range(16)]  # fmt: skip
    prompts = [
        encode_prompt([{"role": "user", "content": q}], policy.tokenizer, "model")
        for q in questions
    ]
    params = sampling_params(base, seed=1)
    rates = {}
    ray.init(include_dashboard=False, log_to_driver=False, num_cpus=cores)
    try:
        for workers in (1, 2):
            cpus = max(1, cores // workers)
            config = load_config(None, [
                'model.name="smollm2-135m-instruct"', 'data.train_file="builtin:gsm8k/train"',
                f"rollout.samples_per_prompt={args.group}", "rollout.batch_size=64",
                "cluster.backend=ray", f"cluster.rollout_workers={workers}",
                f"cluster.worker_cpus={cpus}",
            ])  # fmt: skip
            pool = RayRolloutPool(config, policy, prompts[0][:8], ray)
            try:
                pool.sync_weights(policy.model, 0)
                sync_started = time.monotonic()
                pool.sync_weights(policy.model, 1)
                sync_s = time.monotonic() - sync_started
                pool.generate(prompts[:2], params)  # warm up
                started = time.monotonic()
                groups = pool.generate(prompts, params)
                elapsed = time.monotonic() - started
            finally:
                pool.close()
            tokens = sum(len(c.token_ids) for g in groups for c in g)
            rates[workers] = (tokens / elapsed, sync_s, cpus)
            per_sample = tokens / sum(len(g) for g in groups)
    finally:
        ray.shutdown()
    print(f"\n2. Rollout workers on this machine ({cores} cores), {len(prompts)} prompts x "
          f"{args.group}, up to 64 new tokens")  # fmt: skip
    for workers, (rate, sync_s, cpus) in rates.items():
        print(f"{workers} worker(s), {cpus} core(s) each: {rate:8.1f} tokens/s   weight sync "
              f"{sync_s * 1000:6.1f} ms   ({rate / rates[1][0]:.2f}x one worker)")  # fmt: skip

    best = max(rates, key=lambda w: rates[w][0])  # how this machine samples fastest
    per_machine, sync_s = rates[best][0], rates[best][1]
    tokens_per_step = args.prompts * args.group * per_sample
    print(f"\nPROJECTION (a model from the measured pieces, not a measurement): a step of "
          f"{args.prompts} x {args.group} samples of {per_sample:.0f} tokens, each machine "
          f"sampling as this one does best ({best} worker(s), {per_machine:.0f} tokens/s), "
          f"update {update_s:.1f} s on the trainer, sync {sync_s * 1000:.0f} ms")  # fmt: skip
    print(f"{'machines':>9}{'generate s':>12}{'sync step s':>13}{'1-off step s':>14}")
    for machines in (1, 2, 4, 8, 16):
        generate_s = tokens_per_step / (per_machine * machines)
        sync_step = generate_s + update_s + sync_s
        async_step = max(generate_s, update_s + sync_s)
        print(f"{machines:>9}{generate_s:>12.2f}{sync_step:>13.2f}{async_step:>14.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-grading", action="store_true")
    parser.add_argument("--update-s", type=float, help="the update's time, with --skip-grading")
    args = parser.parse_args()
    update_s = args.update_s
    if not args.skip_grading:
        with tempfile.TemporaryDirectory(prefix="openrft-scale-") as scratch:
            sides = grading(args, Path(scratch))
        update_s = sides["pipelined"]["time/update_s"]
    if not args.skip_ray:
        if update_s is None:
            raise SystemExit("--skip-grading needs --update-s (the projection's update time)")
        rollout_workers(args, update_s)


if __name__ == "__main__":
    main()
