"""The time-per-step estimate of `openrft preflight`: a short calibration on this machine.

It loads the model and builds the job's rollout engine and training forward as `train`
does, then times (a) generations of one rollout batch of real prompts from the job's data,
1 and 1 + m new tokens, so the prefill and the per-token decode cost separate; (b) one
forward and backward of a micro-batch of training rows (the sampled prompts, responses of
rollout.max_new_tokens tokens) and one optimizer step; (c) one weight sync of the engine.

The scaling model (docs/preflight.md):

    rollout_s = chunks x (prefill_s + max_new_tokens x token_s) x batch / calibrated batch
    update_s  = micro_batches x micro_s x (update_epochs + 1/3 for the old log-probs when
                they are recomputed + 1/3 for the reference with KL) + optimizer steps x opt_s
    step_s    = rollout_s + update_s + sync_s
    total_s   = load_s + steps x step_s + validations x validation_s

with chunks = ceil(prompts_per_step x G / rollout.batch_size) and micro_batches = the
micro-batches of every mini-batch. Every completion is taken to run to max_new_tokens, so
rollouts and the update are upper bounds where completions stop early (SST-2's labels stop
after 2-3 of 8 tokens); dynamic sampling's extra rounds, grading and checkpoints are left
out.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from openrft.config import JobConfig
from openrft.data import encode_prompt, load_examples, resolve_data_path
from openrft.errors import RFTError
from openrft.train.data_setup import total_steps
from openrft.train.engines import build_engine
from openrft.train.forward import choose_forward
from openrft.train.optim import build_optimizer
from openrft.train.policy import build_policy
from openrft.types import SamplingParams, TrainRow

SAMPLED_PROMPTS = 64  # rows of the training file whose prompts are measured and used
DECODE_TOKENS = 8  # m: the extra tokens of the second generation
MAX_CALIBRATION_BATCH = 64  # a larger rollout batch is timed at this size and scaled


@dataclass(frozen=True)
class PromptSample:
    """Prompt lengths of the first rows of the training file, and how many rows it has."""

    prompts: list[list[int]]
    mean_tokens: int
    max_tokens: int
    rows: int  # training rows (validation held out when there is no validation file)


@dataclass(frozen=True)
class TimeEstimate:
    load_s: float  # loading the model and building the engine and forward
    prefill_s: float  # one rollout batch's prompts
    token_s: float  # one decode step of the calibrated batch
    calibrated_batch: int  # rows decoded together in the calibration
    micro_s: float  # forward and backward of one micro-batch
    optimizer_s: float  # one optimizer step
    sync_s: float  # one weight sync of the rollout engine
    rollout_s: float  # per step (scaled)
    update_s: float  # per step (scaled)
    step_s: float
    validation_s: float  # one validation
    steps: int
    total_s: float
    calibration_s: float  # how long this calibration took
    forward: str  # which training forward the job uses
    engine: str  # which rollout engine


def sample_prompts(config: JobConfig, tokenizer) -> PromptSample:
    """The rendered prompts of the first rows of data.train_file."""
    examples = load_examples(resolve_data_path(config.data.train_file, "data.train_file"))
    rows = len(examples)
    if not config.data.validation_file:
        rows = max(1, rows - config.data.validation_size)
    prompts = [
        encode_prompt(e.messages, tokenizer, config.model.chat_template)
        for e in examples[:SAMPLED_PROMPTS]
    ]
    lengths = [len(p) for p in prompts]
    return PromptSample(prompts, round(sum(lengths) / len(lengths)), max(lengths), rows)


def calibrate(config: JobConfig, sample: PromptSample | None = None) -> TimeEstimate:
    """Time the pieces of a step on this machine and scale them to `config`."""
    started = time.monotonic()
    rollout, train, algo = config.rollout, config.train, config.algo
    policy = build_policy(config)
    if sample is None:
        sample = sample_prompts(config, policy.tokenizer)
    group = rollout.samples_per_prompt
    fast = train.fast_paths == "auto"
    forward, how = choose_forward(
        policy.causal_lm(), fast, sample.prompts[0], algo.logprob_chunk_tokens
    )
    if rollout.engine != "hf":
        raise RFTError("calibration times the in-process engine only (rollout.engine = 'hf')")
    with tempfile.TemporaryDirectory(prefix="openrft-preflight-") as tmp:
        engine = build_engine(config, policy, sample.prompts[0], Path(tmp))
    load_s = time.monotonic() - started

    # (a) Generation: one rollout batch (at most MAX_CALIBRATION_BATCH rows).
    batch = min(rollout.batch_size, train.prompts_per_step * group, MAX_CALIBRATION_BATCH)
    prompts_per_batch = max(1, batch // group)
    batch = prompts_per_batch * group
    prompts = [sample.prompts[i % len(sample.prompts)] for i in range(prompts_per_batch)]
    params = SamplingParams(
        n=group, temperature=rollout.temperature or 1.0, max_new_tokens=1, seed=train.seed
    )
    engine.generate(prompts[:1], params)  # warm-up: first-call allocations
    first = _timed(lambda: engine.generate(prompts, params))
    extra = min(DECODE_TOKENS, max(0, rollout.max_new_tokens - 1))
    token_s = 0.0
    if extra:
        longer = _timed(lambda: engine.generate(prompts, replace(params, max_new_tokens=1 + extra)))
        token_s = max(0.0, longer - first) / extra
    prefill_s = max(0.0, first - token_s)

    # (b) One micro-batch's forward and backward, and one optimizer step.
    rows_per_mini = max(1, math.ceil(train.prompts_per_step * group / train.mini_batches))
    micro = min(train.micro_batch_size, rows_per_mini)
    rows = _rows(sample.prompts, micro, group, rollout.max_new_tokens, train.seed)
    causal_lm = policy.causal_lm()
    params_list = policy.trainable_parameters()
    optimizer, _ = build_optimizer(params_list, train, 1)

    def micro_batch() -> None:
        out = forward(causal_lm, rows, algo.logprob_chunk_tokens, algo.entropy_coef != 0)
        loss = -(out.logprobs_B_T * out.mask_B_T).sum() / out.mask_B_T.sum()
        loss.backward()

    causal_lm.train()
    micro_s = _timed(micro_batch)
    optimizer_s = _timed(optimizer.step)
    optimizer.zero_grad(set_to_none=True)
    sync_s = _timed(lambda: engine.sync_weights(policy.model, 1))
    engine.close()

    # Scaled to the config.
    scale = min(rollout.batch_size, train.prompts_per_step * group) / batch
    chunks = math.ceil(train.prompts_per_step * group / rollout.batch_size)
    rollout_s = chunks * (prefill_s + rollout.max_new_tokens * token_s) * scale
    micro_batches = train.mini_batches * math.ceil(rows_per_mini / micro)
    recompute = 0 if algo.update_epochs == 1 and train.mini_batches == 1 else 1 / 3
    passes = algo.update_epochs + recompute + (1 / 3 if algo.kl_coef > 0 else 0)
    update_s = micro_batches * micro_s * passes + algo.update_epochs * train.mini_batches * (
        optimizer_s
    )
    step_s = rollout_s + update_s + sync_s
    eval_rows = config.eval.max_prompts or config.data.validation_size
    eval_rows *= config.eval.samples_per_prompt
    eval_new = config.eval.max_new_tokens or rollout.max_new_tokens
    eval_chunks = math.ceil(eval_rows / rollout.batch_size)
    eval_scale = min(rollout.batch_size, eval_rows) / batch
    # A validation batch prefills a prompt per row (G times a rollout batch's prompts).
    validation_s = eval_chunks * (prefill_s * group + eval_new * token_s) * eval_scale
    steps = total_steps(config, sample.rows)
    interval = config.eval.interval
    validations = 2 + (max(0, (steps - 1) // interval) if interval else 0)
    total_s = load_s + steps * step_s + validations * validation_s
    return TimeEstimate(
        load_s=load_s, prefill_s=prefill_s, token_s=token_s, calibrated_batch=batch,
        micro_s=micro_s, optimizer_s=optimizer_s, sync_s=sync_s, rollout_s=rollout_s,
        update_s=update_s, step_s=step_s, validation_s=validation_s, steps=steps,
        total_s=total_s, calibration_s=time.monotonic() - started, forward=how,
        engine=engine.description,
    )  # fmt: skip


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _rows(
    prompts: list[list[int]], count: int, group: int, response: int, seed: int
) -> list[TrainRow]:
    """`count` training rows, `group` to a prompt, each with a random response of
    `response` tokens, every token trained with a non-zero advantage."""
    rng = random.Random(seed)
    vocab_top = max(max(p) for p in prompts) + 1
    rows = []
    for i in range(count):
        prompt = prompts[(i // group) % len(prompts)]
        tokens = tuple(prompt) + tuple(rng.randrange(vocab_top) for _ in range(response))
        advantage = 1.0 if i % 2 else -1.0
        rows.append(
            TrainRow(
                token_ids=tokens,
                prompt_length=len(prompt),
                loss_mask=(True,) * response,
                advantages=(advantage,) * response,
            )
        )
    torch.manual_seed(seed)
    return rows
