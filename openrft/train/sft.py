"""Supervised fine-tuning (SFT), top to bottom: take the next rows, compute the token-mean
cross-entropy on their assistant tokens over micro-batches, clip, step, log, validate,
checkpoint. The run directory has the RL loop's layout (config.toml, metrics.jsonl,
checkpoints/step-N, final/, summary.json, report.md, status.json), so `model.init_from` can
start an RFT run from an SFT run:

    summary = train_sft(load_config("job.toml"), Path("runs/sft"))

Reused from the RL job config: model, lora, data, train, eval and checkpoint; rollout,
reward and algo are ignored. `train.prompts_per_step` is the number of rows (conversations)
per optimizer step, reached by accumulating gradients over `train.micro_batch_size` rows.
Validation is the same loss on held-out rows (`val/loss`), so `val_before`/`val_after` in
summary.json are losses (lower is better). Every step seeds its RNGs from (seed, step) and
the row order is a pure function of seed and position, so a resumed run is exact.
"""

from __future__ import annotations

import dataclasses
import math
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tomli_w
import torch

from openrft.config import JobConfig, TrainConfig
from openrft.data import resolve_data_path, split_holdout
from openrft.data.sft_data import TokenizedConversation, load_conversations, tokenize_conversations
from openrft.errors import CheckpointError, ConfigError
from openrft.metrics import names
from openrft.metrics.system import peak_rss_gb
from openrft.train.data_setup import rows_at, total_steps
from openrft.train.forward import RowForward, choose_forward
from openrft.train.optim import build_optimizer
from openrft.train.policy import Policy, build_policy
from openrft.train.run import SFT, Run, RunSummary, StopRequest
from openrft.types import TrainRow

OPTIONS_FILE = "sft.toml"  # the SFT-only options of a run, next to config.toml
CHUNK_TOKENS = 1024  # hidden states per chunk through the LM head (full logits never exist)


@dataclass(frozen=True)
class SFTOptions:
    """SFT settings that are not part of JobConfig, kept in the run's sft.toml for resume."""

    from_reference: bool = False  # read RL prompt rows; reference_answer is the assistant turn


@dataclass(frozen=True)
class SFTData:
    train: list[TokenizedConversation]
    validation: list[TokenizedConversation]


@dataclass(frozen=True)
class StepStats:
    loss: float  # token-mean cross-entropy over the step's assistant tokens
    grad_norm: float  # before clipping
    lr: float  # the learning rate this step used
    tokens: int  # assistant tokens trained on


def train_sft(
    config: JobConfig,
    run_dir: Path,
    resume: bool = False,
    show_progress: bool = True,
    stop: StopRequest | None = None,
    options: SFTOptions | None = None,
) -> RunSummary:
    """Run (or resume) an SFT job. When `stop` is set, the current step finishes, a checkpoint
    is written and the run returns with status "stopped". `options` default to the run's
    saved ones on resume."""
    run = Run(config, run_dir, SFT, resume, show_progress, stop)
    options = options or (read_options(run_dir) if resume else SFTOptions())
    (run_dir / OPTIONS_FILE).write_text(tomli_w.dumps(dataclasses.asdict(options)))
    run.status("loading", f"loading {config.model.name}")
    policy = build_policy(config)
    run.status("data_processing", f"validating {config.data.train_file}")
    data = load_sft_data(config, policy.tokenizer, options)
    fast = config.train.fast_paths == "auto"
    forward, how = choose_forward(policy.causal_lm(), fast, data.train[0].input_ids, CHUNK_TOKENS)
    run.notes["fast_paths"] = f"update: {how}"
    steps = total_steps(config, len(data.train))
    optimizer, scheduler = build_optimizer(policy.trainable_parameters(), config.train, steps)
    run.restore(policy, optimizer, scheduler, steps)
    if run.position.step == 0:
        run.status("validation", "validating the starting model")
        loss, tokens = validation_loss(policy, data.validation, config.train, forward)
        run.log_start({names.VAL_LOSS: loss, names.VAL_TOKENS: tokens})
    for step in run.steps():
        step_started = time.monotonic()
        torch.manual_seed(config.train.seed * 1_000_003 + step)
        size = config.train.prompts_per_step
        rows = rows_at(data.train, (step - 1) * size, size, config)
        stats = sft_step(policy, rows, optimizer, scheduler, config.train, forward)
        step_s = time.monotonic() - step_started
        record: dict[str, Any] = {
            names.STEP: step,
            names.EPOCH: step * size / len(data.train),
            names.LOSS: stats.loss,
            names.GRAD_NORM: stats.grad_norm,
            names.LR: stats.lr,
            names.TRAIN_TOKENS: stats.tokens,
            names.STEP_S: step_s,
            names.TRAIN_TOKENS_PER_S: stats.tokens / step_s,
            names.PEAK_RSS_GB: peak_rss_gb(),
        }
        if run.validates(step):
            loss, tokens = validation_loss(policy, data.validation, config.train, forward)
            record.update({names.VAL_LOSS: loss, names.VAL_TOKENS: tokens})
        run.end_step(step, record, step * size, policy, optimizer, scheduler)
    return run.finish(policy)


def load_sft_data(config: JobConfig, tokenizer: Any, options: SFTOptions) -> SFTData:
    """Training and validation conversations, tokenized with their assistant-token masks.
    `data.max_prompt_tokens` limits the whole conversation (prompt and answers)."""
    path = resolve_data_path(config.data.train_file, "data.train_file")
    rows = load_conversations(path, options.from_reference)
    if config.data.validation_file:
        train = rows
        path = resolve_data_path(config.data.validation_file, "data.validation_file")
        validation = load_conversations(path, options.from_reference)
    else:
        try:
            train, validation = split_holdout(rows, config.data.validation_size, config.train.seed)
        except ValueError as exc:
            raise ConfigError("data.validation_size", str(exc)) from exc
    if config.eval.max_prompts:
        validation = validation[: config.eval.max_prompts]
    template, limit = config.model.chat_template, config.data.max_prompt_tokens
    return SFTData(
        tokenize_conversations(train, tokenizer, template, limit),
        tokenize_conversations(validation, tokenizer, template, limit),
    )


def sft_step(
    policy: Policy,
    rows: list[TokenizedConversation],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train: TrainConfig,
    forward: RowForward,
) -> StepStats:
    """One optimizer step: the token-mean loss over every assistant token of `rows`, with
    gradients accumulated over micro-batches (exactly the full-batch gradient)."""
    causal_lm = policy.causal_lm()
    total_tokens = sum(row.trained_tokens for row in rows)
    policy.model.train()  # LoRA dropout, when configured
    optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for start in range(0, len(rows), train.micro_batch_size):
        nll, _ = assistant_nll(causal_lm, rows[start : start + train.micro_batch_size], forward)
        loss = nll / total_tokens
        loss.backward()
        loss_sum += float(loss.detach())
    policy.model.eval()
    limit = train.max_grad_norm if train.max_grad_norm > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), limit))
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    return StepStats(loss_sum, grad_norm, lr, total_tokens)


def training_row(conversation: TokenizedConversation) -> TrainRow:
    """A conversation as a training row: everything before its first assistant token is the
    prompt; the rest is the response, its assistant tokens trained (advantages unused)."""
    first = next(i for i, trained in enumerate(conversation.loss_mask) if trained)
    prompt_length = max(first, 1)  # the first token has nothing before it to predict it
    mask = conversation.loss_mask[prompt_length:]
    return TrainRow(conversation.input_ids, prompt_length, mask, (0.0,) * len(mask))


def assistant_nll(
    causal_lm: torch.nn.Module, rows: list[TokenizedConversation], forward: RowForward
) -> tuple[torch.Tensor, int]:
    """(summed negative log-likelihood of the rows' assistant tokens, their count), through
    the same forward as the RL update (packed or plain: `train.fast_paths`)."""
    out = forward(causal_lm, [training_row(row) for row in rows], CHUNK_TOKENS, False)
    return -(out.logprobs_B_T * out.mask_B_T).sum(), int(out.mask_B_T.sum())


@torch.no_grad()
def validation_loss(
    policy: Policy, rows: list[TokenizedConversation], train: TrainConfig, forward: RowForward
) -> tuple[float, int]:
    """(token-mean cross-entropy on the rows' assistant tokens, the token count)."""
    policy.model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(rows), train.micro_batch_size):
        batch = rows[start : start + train.micro_batch_size]
        nll, count = assistant_nll(policy.causal_lm(), batch, forward)
        total, tokens = total + float(nll), tokens + count
    return total / max(tokens, 1), tokens


def options_from_dict(table: dict[str, Any], base: SFTOptions) -> SFTOptions:
    """`base` updated from plain data (a run's sft.toml), each field checked."""
    known = {f.name for f in dataclasses.fields(SFTOptions)}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"sft.{key}", f"unknown field; known: {', '.join(sorted(known))}")
        if not isinstance(value, bool):
            raise ConfigError(f"sft.{key}", f"must be true or false, got {value!r}")
    return replace(base, **table)


def read_options(run_dir: Path) -> SFTOptions:
    """The options a run was started with (defaults for a run without the file)."""
    path = run_dir / OPTIONS_FILE
    if not path.exists():
        return SFTOptions()
    try:
        table = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CheckpointError(f"{path} is unreadable: {exc}") from exc
    return options_from_dict(table, SFTOptions())
