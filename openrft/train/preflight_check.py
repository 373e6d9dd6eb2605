"""Preflight's check: the memory estimate (openrft.train.preflight) against the memory this
machine has, and the knobs that would make a job fit; `check_memory` refuses one that will
not (in `openrft train`, before the model loads, and at job creation on the job server)
unless preflight.check is off.

    fit = check_fit(config, arch, prompt_tokens)   # Fit: fits, available, advice
    check_memory(config)                           # ConfigError naming the first knob
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openrft.config import JobConfig
from openrft.errors import ConfigError
from openrft.train.preflight import (
    GIB,
    TERM_LABELS,
    Architecture,
    MemoryEstimate,
    estimate_memory,
    model_architecture,
)


@dataclass(frozen=True)
class Fit:
    """The estimate against the memory there is, and the knobs that would make it fit."""

    estimate: MemoryEstimate
    available: int  # bytes: host memory available now, or free GPU memory on cuda
    fits: bool
    advice: tuple[str, ...] = field(default=())  # "lower train.micro_batch_size from 32 to 8"
    host_available: int = 0

    def message(self) -> str:
        estimate = self.estimate
        head = (
            f"estimated peak memory {gib(estimate.peak)} exceeds the {gib(self.available)} "
            f"available on this machine ({estimate.device}); the largest term is "
            f"{TERM_LABELS[estimate.dominant]} ({gib(estimate.terms[estimate.dominant])})"
        )
        advice = "; or ".join(self.advice) if self.advice else "use a smaller model"
        return f"{head}: {advice} (preflight.check = false skips this check)"


def gib(value: int) -> str:
    return f"{value / GIB:.2f} GiB"


def available_memory(device: str) -> tuple[int, int]:
    """(bytes available where the policy lives, host bytes available)."""
    import psutil

    host = int(psutil.virtual_memory().available)
    if device != "cuda":
        return host, host
    import torch

    free, _total = torch.cuda.mem_get_info()
    return int(free), host


def policy_device(config: JobConfig) -> str:
    """ "cuda" when model.device names a GPU (auto: when torch sees one), else "cpu"."""
    name = config.model.device
    if name == "cpu":
        return "cpu"
    if name.startswith("cuda"):
        return "cuda"
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# Knobs by the term they shrink, tried in order: (field, smallest value, lower it by).
KNOBS: dict[str, tuple[str, ...]] = {
    "activations": ("train.micro_batch_size", "data.max_prompt_tokens", "rollout.max_new_tokens"),
    "logits": ("algo.logprob_chunk_tokens", "train.micro_batch_size"),
    "kv_cache": ("rollout.batch_size", "rollout.max_new_tokens", "data.max_prompt_tokens"),
    "rollout_transient": ("rollout.batch_size", "data.max_prompt_tokens"),
    "eval_kv_cache": ("rollout.batch_size", "eval.max_new_tokens", "data.max_prompt_tokens"),
}
SWITCHES: dict[str, tuple[tuple[str, Any], ...]] = {
    "weights": (("model.dtype", "bfloat16"),),
    "loading": (("model.dtype", "bfloat16"),),
    "gradients": (("lora.enabled", True), ("lora.rank", 8)),
    "optimizer": (("lora.enabled", True), ("lora.rank", 8)),
    "adapters": (("lora.rank", 8),),
    "reference": (("algo.kl_coef", 0.0), ("lora.enabled", True)),
    "sampling_copy": (("rollout.decoder", "transformers"), ("rollout.dtype", "bfloat16")),
    "runtime": (),
}


def check_fit(
    config: JobConfig,
    arch: Architecture,
    prompt_tokens: int | None = None,
    device: str | None = None,
    available: int | None = None,
) -> Fit:
    """Whether `config` fits in the memory available, and if not which knobs would do."""
    device = device or policy_device(config)
    where, host = available_memory(device) if available is None else (available, available)
    estimate = estimate_memory(config, arch, prompt_tokens, device)
    if estimate.peak <= where:
        return Fit(estimate, where, True, (), host)

    def fits(changed: JobConfig) -> bool:
        return estimate_memory(changed, arch, prompt_tokens, device).peak <= where

    advice: list[str] = []
    ranked = sorted(estimate.terms, key=lambda k: estimate.terms[k], reverse=True)
    for term in ranked:
        for knob in KNOBS.get(term, ()):
            line = _lower_knob(config, knob, fits)
            if line and line not in advice:
                advice.append(line)
        for knob, value in SWITCHES.get(term, ()):
            current = _get(config, knob)
            if current != value and _valid(config, knob, value) and fits(_set(config, knob, value)):
                line = f"set {knob} = {value!r} (now {current!r})".replace("True", "true")
                if line not in advice:
                    advice.append(line)
        if len(advice) >= 3:
            break
    return Fit(estimate, where, False, tuple(advice[:3]), host)


def _lower_knob(config: JobConfig, knob: str, fits: Callable[[JobConfig], bool]) -> str | None:
    """ "lower KNOB from X to Y": the largest Y below X that fits (None: none does)."""
    current = _get(config, knob)
    if knob == "eval.max_new_tokens" and not current:
        current = config.rollout.max_new_tokens
    if not isinstance(current, int) or current <= 1:
        return None
    low, high = 1, current - 1
    if not _valid(config, knob, low) or not fits(_set(config, knob, low)):
        return None
    while low < high:  # the largest value that fits
        middle = (low + high + 1) // 2
        if _valid(config, knob, middle) and fits(_set(config, knob, middle)):
            low = middle
        else:
            high = middle - 1
    return f"lower {knob} from {current} to {low}"


def _get(config: JobConfig, dotted: str) -> Any:
    section, name = dotted.split(".")
    return getattr(getattr(config, section), name)


def _set(config: JobConfig, dotted: str, value: Any) -> JobConfig:
    section, name = dotted.split(".")
    changed = dataclasses.replace(getattr(config, section), **{name: value})
    return dataclasses.replace(config, **{section: changed})


def _valid(config: JobConfig, dotted: str, value: Any) -> bool:
    from openrft.config import validate

    try:
        validate(_set(config, dotted, value))
    except ConfigError:
        return False
    return True


# Rough prompt tokens from characters, without a tokenizer: English runs ~4 characters a
# token, so 3 errs long; plus the chat template's tokens per message and its preamble.
CHARS_PER_TOKEN = 3
TEMPLATE_TOKENS = (48, 16)  # (once, per message)
SAMPLED_ROWS = 256


def rough_prompt_tokens(config: JobConfig) -> int | None:
    """The longest prompt among the first rows of data.train_file, guessed from its
    characters (the check runs before a tokenizer is loaded); at most data.max_prompt_tokens.
    None when the rows cannot be read here (a built-in set not yet prepared)."""
    spec, limit = config.data.train_file, config.data.max_prompt_tokens
    if spec.startswith("builtin:"):
        from openrft.paths import cache_dir

        name, _, split = spec.removeprefix("builtin:").partition("/")
        path = cache_dir() / "data" / name / f"{split}.jsonl"
    else:
        path = Path(spec)
    longest = 0
    try:
        with path.open() as rows:
            for number, line in enumerate(rows):
                if number >= SAMPLED_ROWS:
                    break
                messages = json.loads(line).get("messages") if line.strip() else None
                if not isinstance(messages, list):
                    continue
                chars = sum(len(json.dumps(m.get("content", ""))) for m in messages if m)
                once, each = TEMPLATE_TOKENS
                tokens = math.ceil(chars / CHARS_PER_TOKEN) + once + each * len(messages)
                longest = max(longest, tokens)
    except (OSError, ValueError, AttributeError):
        return None
    return min(longest, limit) if longest else None


def check_memory(config: JobConfig, available: int | None = None) -> Fit | None:
    """Refuse (ConfigError naming the first knob) a config whose estimated peak memory does
    not fit on this machine, unless preflight.check is off. Prompts are taken at the longest
    of the first rows' (rough_prompt_tokens), else at data.max_prompt_tokens. None: not
    checked (the check is off, or the model's architecture cannot be read without loading
    it)."""
    if not config.preflight.check:
        return None
    arch = model_architecture(config.model.name)
    if arch is None:
        return None
    fit = check_fit(config, arch, rough_prompt_tokens(config), available=available)
    if not fit.fits:
        knob = fit.advice[0].split()[1] if fit.advice else "model.name"
        raise ConfigError(knob, fit.message())
    return fit
