"""Typed, frozen job configuration: one dataclass per stage, composed into `JobConfig`.

Load order: a TOML file, then `section.key=value` overrides, then validation. Every field
has a default and a one-line comment; out-of-range values raise `ConfigError` naming the
field and its allowed range. Bedrock's hyperparameter names are accepted in a
`[hyperParameters]` table (with Bedrock's ranges) and mapped onto the native fields.
The resolved config is written next to every run and into every checkpoint (`dump_config`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from openrft.config_parse import (
    apply_advantage_scaling,
    apply_bedrock_aliases,
    build,
)
from openrft.errors import ConfigError

Aggregation = Literal["token_mean", "sequence_mean", "constant"]
Advantage = Literal[
    "grpo", "drgrpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "grpo_per_turn"
]
PolicyLoss = Literal["ppo", "gspo", "cispo", "importance_sampling"]


@dataclass(frozen=True)
class ModelConfig:
    name: str = "smollm2-135m-instruct"  # built-in alias, HF model directory or .gguf file
    dtype: Literal["float32", "bfloat16"] = "float32"  # weights and compute dtype of the policy
    chat_template: Literal["model", "plain"] = "model"  # "plain" renders "role: content" lines
    init_from: str = ""  # run checkpoint or final/ dir to start from
    device: str = "auto"  # where the policy trains and samples: auto (cuda if present), cpu, cuda:N


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = True  # false = full fine-tuning of every weight
    rank: int = 16  # LoRA rank r
    alpha: int = 32  # LoRA scaling numerator (scale = alpha / rank)
    dropout: float = 0.0  # dropout on the LoRA branch
    target_modules: tuple[str, ...] = ("all-linear",)  # module names, or "all-linear"


@dataclass(frozen=True)
class DataConfig:
    train_file: str = "builtin:sst2/train"  # JSONL path, or builtin:sst2/train, builtin:gsm8k/train
    validation_file: str = ""  # JSONL path; empty = hold out `validation_size` rows of train_file
    validation_size: int = 100  # rows held out (seeded) when there is no validation file
    max_prompt_tokens: int = 1024  # a longer rendered prompt is a validation error
    shuffle: bool = True  # shuffle training rows each epoch (seeded by train.seed and the epoch)


@dataclass(frozen=True)
class RolloutConfig:
    engine: Literal["hf", "vllm"] = "hf"  # hf: in this process (CPU or GPU); vllm: a vLLM server
    samples_per_prompt: int = 8  # G: completions per prompt (the GRPO group)
    temperature: float = 1.0  # sampling temperature for training rollouts
    top_p: float = 1.0  # nucleus sampling; 1 disables
    top_k: int = 0  # top-k sampling; 0 disables
    max_new_tokens: int = 64  # generation cap per completion
    stop: tuple[str, ...] = ()  # extra stop strings (the end-of-turn token always stops)
    batch_size: int = 64  # sequences generated together
    dtype: Literal["model", "bfloat16"] = "model"  # sample from the policy, or a merged bf16 copy
    decoder: Literal["auto", "compact", "transformers"] = "auto"  # auto: compact for Llama/Qwen2
    probe_tolerance: float = 0.0  # largest mean |log-prob| gap of a sampling copy; 0 = by dtype
    max_off_policy_steps: int = 0  # 0: synchronous; k: groups may come from weights k updates old


@dataclass(frozen=True)
class VLLMConfig:
    url: str = ""  # a running vLLM server (http://host:port) to use; "" = start one with command
    command: str = "vllm serve"  # how to start vLLM, e.g. from its own venv; openrft adds the flags
    extra_args: tuple[str, ...] = ()  # more server flags, e.g. ["--enforce-eager"]
    dtype: Literal["model", "bfloat16", "float16", "float32"] = "model"  # model: as model.dtype
    gpu_memory_utilization: float = 0.3  # share of GPU memory vLLM takes (weights and KV cache)
    max_model_len: int = 0  # tokens per sequence vLLM reserves; 0 = the model's context length
    start_timeout_s: float = 900.0  # wait this long for a started server to answer /health
    request_timeout_s: float = 3600.0  # limit on one step's generation request
    probe_tolerance: float = 0.1  # largest mean |log-prob| gap from the trainer after a sync


@dataclass(frozen=True)
class RewardConfig:
    grader: str | dict[str, Any] = "exact_label"  # built-in, x.py:fn, mod:fn, grader file, table
    error_score: float | None = None  # score given a failed grading; unset = leave it out
    timeout_s: float = 60.0  # wall-clock limit for grading one sample
    batch_timeout_s: float = 3600.0  # wall-clock limit for grading one group's batch; 0 = none
    pipeline: bool = True  # grade each group as soon as it is generated (false: after them all)


@dataclass(frozen=True)
class ClusterConfig:
    backend: Literal["local", "ray"] = "local"  # local: this process, no Ray; ray: Ray actors
    address: str = ""  # ray: "" starts a local Ray; "auto" or "host:port" joins a cluster
    rollout_workers: int = 1  # ray: rollout engine actors, each with a copy of the weights
    reward_workers: int = 4  # groups graded at once: threads (local) or grader actors (ray)
    worker_cpus: float = 1.0  # ray: CPUs reserved for each rollout worker
    worker_gpus: float = 0.0  # ray: GPUs reserved for each rollout worker
    worker_timeout_s: float = 3600.0  # ray: a worker call running longer restarts the worker
    max_worker_restarts: int = 3  # ray: restarts of a dead worker before the job fails


@dataclass(frozen=True)
class AlgoConfig:
    advantage: Advantage = "grpo"  # advantage estimator (docs/algorithms.md)
    policy_loss: PolicyLoss = "ppo"  # ppo clip, gspo, cispo, importance_sampling
    loss_aggregation: Aggregation = "token_mean"  # DAPO token_mean, GRPO sequence_mean, Dr.GRPO
    clip_low: float = 0.2  # ratio lower clip: 1 - clip_low
    clip_high: float = 0.28  # ratio upper clip: 1 + clip_high (DAPO clip-higher)
    kl_coef: float = 0.0  # weight of KL to the reference policy; 0 skips the reference forward
    kl_estimator: Literal["k1", "k3"] = "k3"  # per-token KL estimator
    entropy_coef: float = 0.0  # entropy bonus weight (entropy is always logged)
    update_epochs: int = 1  # optimisation passes over one batch (old log-probs kept)
    mask_truncated: bool = False  # drop completions that hit max_new_tokens from the loss
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, sample more
    dynamic_sampling_max_rounds: int = 3  # sampling rounds per step at most (the first included)
    overlong_buffer: int = 0  # DAPO soft overlong penalty over the last N tokens before the cap
    overlong_penalty: float = 1.0  # reward taken off a completion that reaches the cap
    # Rollouts from another engine (vLLM) than the trainer: weight each token's policy loss by
    # pi_trainer / pi_sampler (the engine reports its log-probs), bounded as chosen here.
    sampler_correction: Literal["truncate", "mask", "off"] = "truncate"  # TIS, mask, or none
    sampler_correction_cap: float = 2.0  # truncate: largest weight; mask: keep 1/cap..cap
    logprob_chunk_tokens: int = 1024  # tokens per chunk when computing log-probs over the vocab


@dataclass(frozen=True)
class TrainConfig:
    prompts_per_step: int = 8  # prompts per RL step (each gets samples_per_prompt completions)
    micro_batch_size: int = 16  # sequences per forward/backward; gradients accumulate over the step
    mini_batches: int = 1  # optimizer steps per pass over one RL batch
    epochs: int = 1  # passes over the training rows
    max_steps: int = 0  # stop after this many RL steps; 0 = epochs x rows / prompts_per_step
    learning_rate: float = 1e-5  # peak AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.99  # AdamW beta2
    warmup_steps: int = 0  # linear warm-up steps (optimizer steps)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after warm-up
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of the peak
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables
    seed: int = 0  # seeds data order, sampling and initialisation
    threads: int = 0  # torch CPU threads; 0 = all cores
    fast_paths: Literal["auto", "off"] = "auto"  # auto: fast paths where they apply; off: plain
    early_stop_patience: int = 0  # stop after N validations without a new best; 0 = never


@dataclass(frozen=True)
class EvalConfig:
    interval: int = 10  # validate every N steps (always at step 0 and at the end); 0 = only those
    max_prompts: int = 0  # validation prompts used; 0 = all
    samples_per_prompt: int = 1  # completions per validation prompt
    temperature: float = 0.0  # 0 = greedy
    max_new_tokens: int = 0  # 0 = rollout.max_new_tokens
    success_threshold: float = 1.0  # a completion scoring at least this passes (for pass@k)
    baseline_prompts: int = 16  # train prompts the Step-0 baseline samples at job start; 0 = off
    require_signal: bool = False  # refuse to train when the baseline finds no learning signal


@dataclass(frozen=True)
class CheckpointConfig:
    interval: int = 50  # save every N steps (and at the end); 0 = only at the end
    keep_last: int = 2  # the latest checkpoints kept; older ones are deleted unless best
    keep_best: int = 0  # also keep the k best by best_metric (a checkpoint at each validation)
    best_metric: str = "val/reward/mean"  # ranks checkpoints; SFT's default is val/loss
    best_mode: Literal["auto", "max", "min"] = "auto"  # auto: min for a *loss metric, else max
    final: Literal["last", "best"] = "last"  # what final/ holds: the last weights or the best


@dataclass(frozen=True)
class EnvConfig:
    tools: str = ""  # Python file whose public functions are tools (docs/agentic.md); "" = none
    tool_endpoints: dict[str, str] = field(default_factory=dict)  # tool name -> HTTP URL to POST
    tool_headers: dict[str, str] = field(default_factory=dict)  # sent with every endpoint call
    environment: str = ""  # file.py:make_env, module:make_env, or an http(s):// environment service
    isolation: Literal["process", "thread"] = "process"  # a killable worker per episode, or thread
    agent: str = ""  # file.py:run (an agent trained through an OpenAI client), or "external"
    agent_host: str = "127.0.0.1"  # where the agent proxy listens (0.0.0.0: other machines)
    agent_port: int = 0  # its port; 0 picks a free one (shown in the job's log)
    openenv_url: str = ""  # an OpenEnv server's base URL: its environment answers the turns
    openenv_action: str = "json"  # a reply as the action: json, or text:<field> (one field)
    openenv_max_sessions: int = 0  # sessions open at once on the OpenEnv server; 0 = its limit
    verifiers: str = ""  # a verifiers taskset id or module: its tasks are the rows
    verifiers_args: dict[str, Any] = field(default_factory=dict)  # the taskset's config fields
    verifiers_python: str = ".venv-verifiers/bin/python"  # the venv `make verifiers` installs
    verifiers_harness: str = "null"  # verifiers' harness; "" = the taskset's own, else bash
    verifiers_tool_parser: str = "auto"  # auto (by template), hermes, qwen3, none, ...
    remote_timeout_s: float = 3600.0  # per call to an environment service (a step may take hours)
    remote_retries: int = 3  # extra tries of a service call refused or answered 5xx/429
    remote_headers: dict[str, str] = field(default_factory=dict)  # sent with every service call
    tool_parser: str = "auto"  # auto (from the chat template), hermes or llama3_json
    max_turns: int = 6  # assistant turns per episode
    max_episode_tokens: int = 4096  # prompt + every turn and environment message
    tool_timeout_s: float = 30.0  # per tool call; a hung tool's worker is killed
    episode_timeout_s: float = 600.0  # wall clock per episode; then it ends with "timeout"
    max_concurrent: int = 16  # environment steps and tool calls running at once
    reward: Literal["episode", "turns", "sum"] = "episode"  # grade; per-turn rewards; both summed
    cut_penalty: float = 0.0  # taken off an episode cut by max_turns, length or timeout
    mask_cut: bool = False  # leave episodes cut by a limit out of the update

    @property
    def enabled(self) -> bool:
        """Rollouts are multi-turn episodes (tools or an environment are configured)."""
        answers = (
            self.tools,
            self.tool_endpoints,
            self.environment,
            self.agent,
            self.openenv_url,
            self.verifiers,
        )
        return any(answers)


@dataclass(frozen=True)
class TrackingConfig:
    backends: tuple[str, ...] = ()  # experiment trackers: any of tensorboard, mlflow, wandb
    project: str = "openrft"  # the MLflow experiment and W&B project the run is logged under


@dataclass(frozen=True)
class JobsConfig:
    max_restarts: int = 3  # job server: resumes after a worker is killed (OOM, lost node); 0 = off


@dataclass(frozen=True)
class PreflightConfig:
    check: bool = True  # refuse to start a job whose estimated peak memory does not fit here


@dataclass(frozen=True)
class JobConfig:
    name: str = "openrft-run"  # run name, used for the default output directory
    output_dir: str = "runs"  # where `train` creates RUN_DIR when --output is not given
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    preflight: PreflightConfig = field(default_factory=PreflightConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)


# tracking.backends' names (openrft.metrics.trackers opens them).
TRACKING_BACKENDS = ("tensorboard", "mlflow", "wandb")

# Allowed ranges (inclusive) by dotted field name; checked after every load.
RANGES: dict[str, tuple[float, float]] = {
    "lora.rank": (1, 1024),
    "lora.alpha": (1, 4096),
    "lora.dropout": (0.0, 0.9),
    "data.validation_size": (1, 100_000),
    "data.max_prompt_tokens": (8, 1_000_000),
    "rollout.samples_per_prompt": (2, 256),
    "rollout.temperature": (0.0, 10.0),
    "rollout.top_p": (0.0, 1.0),
    "rollout.top_k": (0, 1_000_000),
    "rollout.max_new_tokens": (1, 1_000_000),
    "rollout.batch_size": (1, 100_000),
    "rollout.probe_tolerance": (0.0, 100.0),
    "rollout.max_off_policy_steps": (0, 1000),
    "vllm.gpu_memory_utilization": (0.01, 1.0),
    "vllm.max_model_len": (0, 10_000_000),
    "vllm.start_timeout_s": (1, 86_400),
    "vllm.request_timeout_s": (1, 86_400 * 7),
    "vllm.probe_tolerance": (0.0, 100.0),
    "reward.timeout_s": (0.001, 86_400),
    "reward.batch_timeout_s": (0, 86_400),
    "eval.baseline_prompts": (0, 100_000),
    "algo.clip_low": (0.0, 1.0),
    "algo.clip_high": (0.0, 10.0),
    "algo.kl_coef": (0.0, 100.0),
    "algo.entropy_coef": (-10.0, 10.0),
    "algo.update_epochs": (1, 100),
    "algo.dynamic_sampling_max_rounds": (1, 100),
    "algo.overlong_buffer": (0, 1_000_000),
    "algo.overlong_penalty": (0.0, 1000.0),
    "algo.sampler_correction_cap": (1.0, 1_000_000.0),
    "algo.logprob_chunk_tokens": (1, 1_000_000),
    "jobs.max_restarts": (0, 100),
    "train.prompts_per_step": (1, 100_000),
    "train.micro_batch_size": (1, 100_000),
    "train.mini_batches": (1, 1024),
    "train.epochs": (1, 1000),
    "train.max_steps": (0, 10_000_000),
    "train.learning_rate": (1e-9, 1.0),
    "train.weight_decay": (0.0, 10.0),
    "train.adam_beta1": (0.0, 0.999999),
    "train.adam_beta2": (0.0, 0.999999),
    "train.warmup_steps": (0, 10_000_000),
    "train.min_lr_ratio": (0.0, 1.0),
    "train.max_grad_norm": (0.0, 1e6),
    "train.threads": (0, 1024),
    "train.early_stop_patience": (0, 1_000_000),
    "eval.interval": (0, 1_000_000),
    "eval.max_prompts": (0, 10_000_000),
    "eval.samples_per_prompt": (1, 1024),
    "eval.temperature": (0.0, 10.0),
    "eval.max_new_tokens": (0, 1_000_000),
    "eval.success_threshold": (-1e6, 1e6),
    "checkpoint.interval": (0, 1_000_000),
    "checkpoint.keep_last": (1, 1000),
    "checkpoint.keep_best": (0, 1000),
    "env.max_turns": (1, 1000),
    "env.max_episode_tokens": (16, 10_000_000),
    "env.tool_timeout_s": (0.01, 86_400),
    "env.episode_timeout_s": (0.01, 86_400 * 7),
    "env.max_concurrent": (1, 10_000),
    "env.cut_penalty": (0.0, 1000.0),
    "env.remote_timeout_s": (0.001, 86_400 * 7),
    "env.remote_retries": (0, 100),
    "env.openenv_max_sessions": (0, 100_000),
    "env.agent_port": (0, 65_535),
    "cluster.rollout_workers": (1, 10_000),
    "cluster.reward_workers": (1, 10_000),
    "cluster.worker_cpus": (0.0, 1024.0),
    "cluster.worker_gpus": (0.0, 64.0),
    "cluster.worker_timeout_s": (1, 86_400 * 7),
    "cluster.max_worker_restarts": (0, 1000),
}


# algo.advantage_scaling, replaced by algo.advantage: old value -> the estimator it was.
def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Read a TOML file (or start from defaults), apply `section.key=value` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError("<file>", f"config file not found: {path}") from exc
        except OSError as exc:
            raise ConfigError("<file>", f"cannot read {path}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError("<file>", f"{path} is not UTF-8 text (byte {exc.start})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("<file>", f"{path} is not valid TOML: {exc}") from exc
        except RecursionError as exc:  # tomllib recurses once per level of nesting
            raise ConfigError("<file>", f"{path} nests arrays or tables too deeply") from exc
    for item in overrides or []:
        apply_override(raw, item)
    return config_from_dict(raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `section.key=value` in a raw config dict; the value is parsed as TOML when it can be."""
    if "=" not in item:
        raise ConfigError(item, "an override must look like section.key=value")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(item, "an override must look like section.key=value")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word such as cosine or path/to/file.jsonl
    except RecursionError as exc:
        raise ConfigError(key, "the value nests arrays or tables too deeply") from exc
    table = raw
    for part in parts[:-1]:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise ConfigError(key, f"'{part}' is not a section")
    table[parts[-1]] = value


def config_from_dict(raw: dict[str, Any]) -> JobConfig:
    """Build and validate a JobConfig from plain TOML data (Bedrock aliases included)."""
    raw = apply_advantage_scaling(apply_bedrock_aliases(dict(raw)))
    config = build(JobConfig, raw, prefix="")
    validate(config)
    return config


def validate(config: JobConfig) -> None:
    """Check ranges and cross-field rules; raise ConfigError naming the field."""
    for name, (low, high) in RANGES.items():
        value = get_field(config, name)
        if not low <= value <= high:
            raise ConfigError(name, f"{value} is out of range; allowed {low} to {high}")
    if not config.data.train_file:
        raise ConfigError("data.train_file", "is required")
    grader = config.reward.grader
    if isinstance(grader, dict) and not isinstance(grader.get("type"), str):
        raise ConfigError("reward.grader.type", "an inline grader table needs a type string")
    if config.reward.error_score is not None and not math.isfinite(config.reward.error_score):
        raise ConfigError("reward.error_score", "must be a finite number")
    device = config.model.device
    if device != "auto" and device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise ConfigError("model.device", f"{device!r}: choose auto, cpu, cuda or cuda:N")
    if config.vllm.url and not config.vllm.url.startswith(("http://", "https://")):
        raise ConfigError("vllm.url", f"{config.vllm.url!r} is not an http:// or https:// URL")
    if not config.lora.target_modules:
        raise ConfigError("lora.target_modules", "must name at least one module or 'all-linear'")
    if config.algo.overlong_buffer > config.rollout.max_new_tokens:
        raise ConfigError(
            "algo.overlong_buffer",
            f"{config.algo.overlong_buffer} tokens is longer than rollout.max_new_tokens = "
            f"{config.rollout.max_new_tokens}",
        )
    if config.checkpoint.final == "best" and config.checkpoint.keep_best < 1:
        raise ConfigError("checkpoint.final", "'best' needs checkpoint.keep_best >= 1")
    if config.train.early_stop_patience and not config.eval.interval:
        raise ConfigError(
            "train.early_stop_patience", "needs eval.interval > 0 (validations to compare)"
        )
    env = config.env
    if env.tools and env.environment:
        raise ConfigError(
            "env.environment",
            "set env.tools or env.environment, not both (an environment runs its own tools)",
        )
    if env.agent and (env.tools or env.tool_endpoints or env.environment or env.openenv_url):
        raise ConfigError(
            "env.agent",
            "an agent runs its own tools and environment: set it without env.tools, "
            "env.tool_endpoints, env.environment or env.openenv_url",
        )
    if env.verifiers and (
        env.tools or env.tool_endpoints or env.environment or env.agent or env.openenv_url
    ):
        raise ConfigError(
            "env.verifiers",
            "the taskset brings its own tools, environment and rewards: set it without "
            "env.tools, env.tool_endpoints, env.environment, env.agent or env.openenv_url",
        )
    if env.verifiers and env.reward != "episode":
        raise ConfigError(
            "env.reward", "a verifiers taskset scores whole episodes: leave env.reward = 'episode'"
        )
    if env.openenv_url and (env.tools or env.tool_endpoints or env.environment):
        raise ConfigError(
            "env.openenv_url",
            "the OpenEnv server is the environment: set it without env.tools, "
            "env.tool_endpoints or env.environment",
        )
    for name, url in env.tool_endpoints.items():
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"env.tool_endpoints.{name}", f"{url!r} is not an http(s) URL")
    if env.enabled and config.algo.overlong_buffer:
        raise ConfigError(
            "algo.overlong_buffer", "applies to single-turn rollouts; episodes use env.cut_penalty"
        )
    if env.enabled and config.rollout.engine == "vllm" and config.rollout.stop:
        raise ConfigError("rollout.stop", "stop strings are not supported in episodes on vLLM")
    cluster = config.cluster
    if cluster.backend == "local" and cluster.address:
        raise ConfigError("cluster.address", "joining a cluster needs cluster.backend = 'ray'")
    if cluster.backend == "ray" and config.rollout.engine == "vllm":
        raise ConfigError(
            "cluster.backend",
            "rollout.engine = 'vllm' already samples outside the trainer: with Ray, rollout "
            "workers run the in-process engine ('hf')",
        )
    if not config.checkpoint.best_metric:
        raise ConfigError("checkpoint.best_metric", "must name a metric, e.g. val/reward/mean")
    unknown = sorted(set(config.tracking.backends) - set(TRACKING_BACKENDS))
    if unknown:
        raise ConfigError("tracking.backends", f"{unknown}: choose from {list(TRACKING_BACKENDS)}")


def get_field(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def config_to_dict(config: JobConfig) -> dict[str, Any]:
    """Plain data for TOML/JSON; unset optional fields (None) are left out."""
    return _drop_none(dataclasses.asdict(config))


def dump_config(config: JobConfig, path: str | Path) -> None:
    Path(path).write_text(tomli_w.dumps(config_to_dict(config)))


def field_comments() -> dict[str, str]:
    """Dotted field name -> its one-line comment, read from this file (for docs and `config`)."""
    owners = {cls.__name__: name for name, cls in _sections().items()} | {"JobConfig": ""}
    comments: dict[str, str] = {}
    section: str | None = None
    for line in Path(__file__).read_text().splitlines():
        if line and not line.startswith(" "):  # a new top-level statement ends the class body
            name = line[6:].split("(")[0].split(":")[0] if line.startswith("class ") else ""
            section = owners.get(name)
        elif section is not None and line.startswith("    ") and " = " in line and "  # " in line:
            name = line.strip().split(":")[0]
            comments[f"{section}.{name}".lstrip(".")] = line.split("  # ", 1)[1].strip()
    return comments


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(JobConfig)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(JobConfig)
        if dataclasses.is_dataclass(hints[f.name])
    }


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, tuple):
        return list(value)
    return value
