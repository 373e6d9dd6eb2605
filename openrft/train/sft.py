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
import json
import math
import sys
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tomli_w
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from openrft.config import JobConfig, dump_config
from openrft.data import resolve_data_path, split_holdout
from openrft.data.sft_data import TokenizedConversation, load_conversations, tokenize_conversations
from openrft.errors import CheckpointError, ConfigError
from openrft.metrics import names
from openrft.metrics.report import _plot
from openrft.metrics.writer import JsonlLog, read_jsonl
from openrft.train.checkpoint import (
    TrainPosition,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from openrft.train.data_setup import epoch_order, total_steps
from openrft.train.loop import RunSummary, StopRequest, peak_rss_gb
from openrft.train.optim import build_optimizer
from openrft.train.policy import Policy, build_policy, lm_head_logprobs, set_threads
from openrft.train.status import write_status

VAL_LOSS = "val/loss"
VAL_TOKENS = "val/tokens"
TRAIN_TOKENS = "train/tokens"
TOKENS_PER_S = "throughput/train_tokens_per_s"
OPTIONS_FILE = "sft.toml"  # the SFT-only options of a run, next to config.toml
CHUNK_TOKENS = 1024  # hidden states per chunk through the LM head (full logits never exist)
PLOTS = [
    ("loss.png", "Training loss (assistant tokens, nats/token)", [names.LOSS], None),
    ("val_loss.png", "Validation loss (assistant tokens, nats/token)", [VAL_LOSS], None),
]


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


@dataclass
class _Session:
    """Everything one invocation of `train_sft` works with."""

    config: JobConfig
    run_dir: Path
    policy: Policy
    data: SFTData
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    steps: int
    position: TrainPosition
    metrics: JsonlLog
    started: float
    prior_wall_s: float


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
    session = _open_session(config, run_dir, resume, options)
    if session.position.step == 0:
        write_status(run_dir, "validation", 0, session.steps, "validating the starting model")
        loss, tokens = validation_loss(session.policy, session.data.validation, config.train)
        session.metrics.write({names.STEP: 0, names.EPOCH: 0.0, VAL_LOSS: loss, VAL_TOKENS: tokens})
        session.position = replace(session.position, val_before=loss)
    status, val_after = _train_steps(session, stop, show_progress)
    return _finish(session, status, val_after)


def _open_session(
    config: JobConfig, run_dir: Path, resume: bool, options: SFTOptions | None
) -> _Session:
    started = time.monotonic()
    run_dir.mkdir(parents=True, exist_ok=True)
    options = options or (read_options(run_dir) if resume else SFTOptions())
    dump_config(config, run_dir / "config.toml")
    (run_dir / OPTIONS_FILE).write_text(tomli_w.dumps(dataclasses.asdict(options)))
    set_threads(config.train.threads)
    torch.manual_seed(config.train.seed)

    write_status(run_dir, "loading", message=f"loading {config.model.name}")
    policy = build_policy(config)
    write_status(run_dir, "data_processing", message=f"validating {config.data.train_file}")
    data = load_sft_data(config, policy.tokenizer, options)
    steps = total_steps(config, len(data.train))
    optimizer, scheduler = build_optimizer(policy.trainable_parameters(), config.train, steps)

    position = TrainPosition(step=0, prompts_seen=0, val_before=None, wall_s=0.0)
    checkpoints = list_checkpoints(run_dir) if resume else []
    if checkpoints:
        position = load_checkpoint(checkpoints[-1], policy, optimizer, scheduler)
    finished = (run_dir / "final").exists() and (not checkpoints or position.step >= steps)
    if resume and finished:
        raise CheckpointError(f"{run_dir} finished already; nothing to resume")
    # Lines after the checkpoint (or every line, without one) belong to lost work.
    keep_through = position.step if checkpoints else -1
    metrics = JsonlLog(run_dir / "metrics.jsonl", keep_through_step=keep_through)
    return _Session(
        config, run_dir, policy, data, optimizer, scheduler, steps, position, metrics,
        started, position.wall_s,
    )  # fmt: skip


def _train_steps(
    s: _Session, stop: StopRequest | None, show_progress: bool
) -> tuple[str, float | None]:
    config, train = s.config, s.config.train
    progress = SFTProgress(s.steps, s.position.step, s.position.val_before, show_progress)
    status, val_after = "completed", s.position.val_before
    for step in range(s.position.step + 1, s.steps + 1):
        write_status(s.run_dir, "training", step - 1, s.steps)
        step_started = time.monotonic()
        torch.manual_seed(train.seed * 1_000_003 + step)
        rows = rows_for_step(step, s.data.train, config)
        stats = sft_step(s.policy, rows, s.optimizer, s.scheduler, train)
        step_s = time.monotonic() - step_started
        record: dict[str, Any] = {
            names.STEP: step,
            names.EPOCH: step * train.prompts_per_step / len(s.data.train),
            names.LOSS: stats.loss,
            names.GRAD_NORM: stats.grad_norm,
            names.LR: stats.lr,
            TRAIN_TOKENS: stats.tokens,
            names.STEP_S: step_s,
            TOKENS_PER_S: stats.tokens / step_s,
            names.PEAK_RSS_GB: peak_rss_gb(),
        }
        if step == s.steps or (config.eval.interval and step % config.eval.interval == 0):
            val_after, tokens = validation_loss(s.policy, s.data.validation, train)
            record.update({VAL_LOSS: val_after, VAL_TOKENS: tokens})
        s.metrics.write(record)
        s.position = TrainPosition(
            step=step,
            prompts_seen=step * train.prompts_per_step,
            val_before=s.position.val_before,
            wall_s=s.prior_wall_s + time.monotonic() - s.started,
        )
        stopping = stop is not None and stop.is_set() and step < s.steps
        periodic = config.checkpoint.interval and step % config.checkpoint.interval == 0
        if step == s.steps or periodic or stopping:
            save_checkpoint(
                s.run_dir, s.position, s.policy, s.optimizer, s.scheduler, config,
                config.checkpoint.keep_last,
            )  # fmt: skip
        progress.update(step, record)
        if stopping:
            status = "stopped"
            break
    progress.close()
    return status, val_after


def _finish(s: _Session, status: str, val_after: float | None) -> RunSummary:
    s.metrics.close()
    if status == "completed":
        s.policy.save(s.run_dir / "final")
    wall_s = s.prior_wall_s + time.monotonic() - s.started
    summary = RunSummary(
        s.position.val_before, val_after, s.position.step, round(wall_s, 1), str(s.run_dir), "",
        status,
    )  # fmt: skip
    report = write_sft_report(s.run_dir, summary.__dict__)
    summary = replace(summary, report=str(report))
    record = {**summary.__dict__, "kind": "sft", "metric": VAL_LOSS}
    (s.run_dir / "summary.json").write_text(json.dumps(record, indent=2))
    write_status(s.run_dir, status, s.position.step, s.steps)
    return summary


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


def rows_for_step(step: int, rows: list[Any], config: JobConfig) -> list[Any]:
    """The rows of step `step` (1-based): the next slice of an endless stream of epochs, each a
    fresh seeded permutation (the RL loop's order, so resume is exact)."""
    size, count = config.train.prompts_per_step, len(rows)
    orders: dict[int, list[int]] = {}
    batch = []
    for position in range((step - 1) * size, step * size):
        epoch, offset = divmod(position, count)
        if epoch not in orders:
            orders[epoch] = epoch_order(epoch, count, config)
        batch.append(rows[orders[epoch][offset]])
    return batch


def sft_step(
    policy: Policy,
    rows: list[TokenizedConversation],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train: Any,
) -> StepStats:
    """One optimizer step: the token-mean loss over every assistant token of `rows`, with
    gradients accumulated over micro-batches (exactly the full-batch gradient)."""
    causal_lm = policy.causal_lm()
    total_tokens = sum(row.trained_tokens for row in rows)
    policy.model.train()  # LoRA dropout, when configured
    optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for start in range(0, len(rows), train.micro_batch_size):
        nll, _ = assistant_nll(causal_lm, rows[start : start + train.micro_batch_size])
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


def assistant_nll(
    causal_lm: torch.nn.Module, rows: list[TokenizedConversation]
) -> tuple[torch.Tensor, int]:
    """(summed negative log-likelihood of the rows' assistant tokens, their count). Rows are
    right-padded; only hidden states that predict an assistant token reach the LM head."""
    device = next(causal_lm.parameters()).device
    width = max(len(row.input_ids) for row in rows)
    ids_B_T = torch.zeros((len(rows), width), dtype=torch.long)
    attention_B_T = torch.zeros((len(rows), width), dtype=torch.long)
    mask_B_T = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids_B_T[i, : len(row.input_ids)] = torch.tensor(row.input_ids)
        attention_B_T[i, : len(row.input_ids)] = 1
        mask_B_T[i, : len(row.input_ids)] = torch.tensor(row.loss_mask)
    ids_B_T, attention_B_T, mask_B_T = (
        ids_B_T.to(device),
        attention_B_T.to(device),
        mask_B_T.to(device),
    )
    out = causal_lm.get_decoder()(input_ids=ids_B_T, attention_mask=attention_B_T, use_cache=False)
    predicts_B_T = mask_B_T[:, 1:]  # the hidden state at t predicts token t + 1
    hidden_N_H = out.last_hidden_state[:, :-1][predicts_B_T]
    targets_N = ids_B_T[:, 1:][predicts_B_T]
    logprobs_N, _ = lm_head_logprobs(causal_lm, hidden_N_H, targets_N, CHUNK_TOKENS, False)
    return -logprobs_N.sum(), int(targets_N.numel())


@torch.no_grad()
def validation_loss(
    policy: Policy, rows: list[TokenizedConversation], train: Any
) -> tuple[float, int]:
    """(token-mean cross-entropy on the rows' assistant tokens, the token count)."""
    policy.model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(rows), train.micro_batch_size):
        nll, count = assistant_nll(policy.causal_lm(), rows[start : start + train.micro_batch_size])
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


def write_sft_report(run_dir: Path, summary: dict[str, Any]) -> Path:
    """report.md with the training and validation loss plots."""
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    images = [
        (title, filename)
        for filename, title, keys, band in PLOTS
        if _plot(metrics, keys, band, title, run_dir / filename)
    ]
    lines = [
        f"# openrft SFT report: {run_dir.name}",
        "",
        "| | |",
        "|---|---|",
        f"| validation loss before | {_fmt(summary.get('val_before'))} |",
        f"| validation loss after | {_fmt(summary.get('val_after'))} |",
        f"| steps | {summary.get('steps')} |",
        f"| wall time | {_fmt(summary.get('wall_s'))} s |",
        "",
    ]
    for title, filename in images:
        lines += [f"## {title}", "", f"![{title}]({filename})", ""]
    last = next((m for m in reversed(metrics) if names.LOSS in m), None)
    if last:
        lines += ["## Last step", "", "```json", json.dumps(last, indent=1), "```", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


class SFTProgress:
    """A rich progress bar (step, loss, validation loss, ETA) on a terminal; one plain line
    per step otherwise (job logs, CI)."""

    def __init__(self, total: int, done: int, val_before: float | None, enabled: bool = True):
        self.total, self.first_step, self.enabled = total, done, enabled
        self.val, self.started, self.bar = val_before, time.monotonic(), None
        console = Console(stderr=True)
        if enabled and console.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(),
                TextColumn("loss {task.fields[loss]}  val loss {task.fields[val]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
            )  # fmt: skip
            self.task = self.bar.add_task(
                "sft", total=total, completed=done, loss="-", val=_fmt(val_before)
            )
            self.bar.start()
        elif enabled:
            start = f"starting at step {done}/{total}, validation loss {_fmt(val_before)}"
            print(f"openrft sft: {start}", file=sys.stderr, flush=True)

    def update(self, step: int, record: dict[str, Any]) -> None:
        if record.get(VAL_LOSS) is not None:
            self.val = record[VAL_LOSS]
        loss = _fmt(record.get(names.LOSS))
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=loss, val=_fmt(self.val))
        elif self.enabled:
            done = step - self.first_step
            eta = (time.monotonic() - self.started) / done * (self.total - step) if done else 0.0
            print(
                f"step {step}/{self.total}  loss {loss}  val loss {_fmt(self.val)}  "
                f"{record.get(names.STEP_S, 0):.1f}s/step  ETA {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-" if value is None else str(value)
