"""The trainable policy: a loaded model wrapped with LoRA (peft) or trained in full.

With LoRA the reference policy for KL is the same model with its adapters disabled, so no
second copy of the weights exists. Full fine-tuning keeps a frozen copy only when KL is on.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import peft
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from openrft.config import JobConfig
from openrft.errors import ModelError
from openrft.models.load import load_model


@dataclass
class Policy:
    model: nn.Module  # a PeftModel with LoRA, or the bare model for full fine-tuning
    tokenizer: PreTrainedTokenizerBase
    uses_lora: bool
    frozen_reference: nn.Module | None = None  # full fine-tuning with KL only

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def causal_lm(self) -> PreTrainedModel:
        """The underlying transformers model (LoRA layers injected in place)."""
        return self.model.get_base_model() if self.uses_lora else self.model

    @contextlib.contextmanager
    def reference(self) -> Iterator[PreTrainedModel]:
        """The reference policy: adapters disabled, or the frozen copy."""
        if self.uses_lora:
            with self.model.disable_adapter():
                yield self.causal_lm()
        elif self.frozen_reference is not None:
            yield self.frozen_reference
        else:
            raise ModelError("no reference model: full fine-tuning keeps one only when kl_coef > 0")

    def save(self, directory: Path) -> None:
        """The adapter (PEFT format) or the full weights, loadable by transformers/peft."""
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)


def build_policy(config: JobConfig) -> Policy:
    model, tokenizer = load_model(config.model.name, config.model.dtype)
    init_from = resolve_init_from(config.model.init_from)
    from_adapter = init_from is not None and (init_from / "adapter_config.json").exists()
    if init_from is not None and not from_adapter:
        # Full weights (a full fine-tuning run) replace the base; LoRA, if on, goes on top.
        model, _ = load_model(str(init_from), config.model.dtype)
    model = model.to(resolve_device(config.model.device))  # LoRA weights are made beside it
    if config.lora.enabled:
        if from_adapter:
            # The adapter keeps training with its own rank and targets (adapter_config.json).
            model = peft.PeftModel.from_pretrained(model, init_from, is_trainable=True)
        else:
            model = peft.get_peft_model(model, lora_config(config))
        return Policy(model=model, tokenizer=tokenizer, uses_lora=True)
    if from_adapter:
        # Full fine-tuning from a LoRA run: its adapter merged into the base weights.
        model = peft.PeftModel.from_pretrained(model, init_from).merge_and_unload()
        model.requires_grad_(True)  # peft froze the base weights while the adapter loaded
    reference = None
    if config.algo.kl_coef > 0:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    return Policy(model=model, tokenizer=tokenizer, uses_lora=False, frozen_reference=reference)


def resolve_device(name: str) -> torch.device:
    """model.device: "auto" is the first CUDA GPU when torch sees one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"model.device = {name!r}, but torch sees no CUDA GPU")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ModelError(f"model.device = {name!r}: torch sees {torch.cuda.device_count()} GPUs")
    return device


def resolve_init_from(path: str) -> Path | None:
    """A run's final/ directory, a checkpoint (its model/ holds the weights) or a run directory
    (its final/, else its latest checkpoint)."""
    if not path:
        return None
    root = Path(path).expanduser()
    candidates = [root, root / "model", root / "final"]
    checkpoints = sorted((root / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
    candidates += [c / "model" for c in reversed(checkpoints)]
    for candidate in candidates:
        if (candidate / "adapter_config.json").exists() or (candidate / "config.json").exists():
            return candidate
    raise ModelError(f"model.init_from: no adapter or model weights found in {root}")


def lora_config(config: JobConfig) -> peft.LoraConfig:
    targets = config.lora.target_modules
    return peft.LoraConfig(
        r=config.lora.rank,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules="all-linear" if targets == ("all-linear",) else list(targets),
        task_type="CAUSAL_LM",
    )


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
