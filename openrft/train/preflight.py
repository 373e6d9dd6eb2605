"""Preflight: a job's peak memory, estimated from its config and its model's config.json,
before any weights are loaded; and the check that refuses a job that will not fit, naming
the knob to turn (`openrft preflight`, `openrft train`, job creation on the job server).

    arch = model_architecture(config.model.name)       # config.json only; None: unknown
    estimate = estimate_memory(config, arch)           # bytes by term, phases, the peak
    check_memory(config)         # openrft.train.preflight_check: refuse, naming the knob

The model (docs/preflight.md has the derivation and how it compares with measured runs):
- static, held all run: the runtime (Python, torch, transformers, the tokenizer and data),
  the weights (parameter count from the architecture x model.dtype), LoRA adapters (float32)
  or, in full fine-tuning, every weight trainable; their gradients and AdamW's two moments
  (in the trainable parameters' dtype); a frozen reference copy (full fine-tuning with KL;
  LoRA's reference is the same model with its adapters off); the sampling copy of the
  compact decoder or of a bf16 rollout (docs/config.md, "Rollout speed settings").
- rollout (transient): the KV cache of a rollout batch (float32 on the CPU for the compact
  decoder: each prompt once, each sample's new tokens), one layer's prefill activations and
  a decode step's logits; validation's batch (one sample per prompt) the same way.
- update (transient): the activations one micro-batch keeps for backward (per token and
  layer, the SwiGLU decoder's saved tensors: ACTIVATION_HIDDEN x hidden + ACTIVATION_MLP x
  intermediate values) and the LM head's logits (the chunked head keeps all of a
  micro-batch's float32 logits under 256 MiB, else one chunk).
- loading: the weight files as stored (mapped) plus the model in model.dtype.
peak = max(loading, static + max(rollout, update)); with rollout.max_off_policy_steps > 0
sampling runs beside the update, so the two add. Prompts are taken at
data.max_prompt_tokens, the longest a row may be, unless a prompt length is given.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openrft.config import JobConfig

GIB = 1024**3
# Python + torch + transformers + peft + openrft imported, the tokenizer, the rows and the
# grader: measured as the peak RSS of `openrft train` minus the terms below (docs/preflight.md).
RUNTIME_BYTES = int(0.55 * GIB)
# Values one decoder layer keeps for backward per token, in units of the hidden size and the
# MLP's intermediate size (norm inputs and outputs, q/k/v, rotated q/k, attention output,
# residuals; gate, up, their silu and product), fitted to measured update peaks.
ACTIVATION_HIDDEN = 12
ACTIVATION_MLP = 5
KEEP_LOGITS_BYTES = 256 * 2**20  # openrft.fast.lm_head.KEEP_FOR_BACKWARD_BYTES
COMPACT_TYPES = ("llama", "qwen2")  # openrft.fast.compact.SUPPORTED_TYPES
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# The built-in aliases' architectures, for a machine that has not converted their GGUF yet
# (their config.json is written by that conversion, which loads the model).
ALIAS_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "smollm2-135m-instruct": {
        "model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
        "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True,
    },
    "qwen2.5-coder-0.5b-instruct": {
        "model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864,
        "vocab_size": 151936, "tie_word_embeddings": False,
    },
}  # fmt: skip


@dataclass(frozen=True)
class Architecture:
    """What the estimate needs from a decoder-only model's config.json."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool  # Qwen2's q/k/v projections have biases
    stored_bytes: int = 0  # the weight files on disk (0: unknown, taken as float32)

    @classmethod
    def from_config(cls, raw: dict[str, Any], stored_bytes: int = 0) -> Architecture:
        text = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else raw
        hidden, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
        model_type = str(text.get("model_type") or raw.get("model_type") or "")
        return cls(
            model_type=model_type,
            hidden=hidden,
            layers=int(text["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or hidden // heads),
            intermediate=int(text.get("intermediate_size") or 4 * hidden),
            vocab=int(text["vocab_size"]),
            tied=bool(raw.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            qkv_bias=model_type == "qwen2" or bool(text.get("attention_bias", False)),
            stored_bytes=stored_bytes,
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each decoder layer's projections."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }  # fmt: skip

    def layer_params(self) -> int:
        shapes = self.linear_shapes()
        weights = sum(a * b for a, b in shapes.values())
        bias = shapes["q_proj"][1] + 2 * shapes["k_proj"][1] if self.qkv_bias else 0
        return weights + bias + 2 * self.hidden  # + the two RMSNorm weights

    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    def head_params(self) -> int:
        return 0 if self.tied else self.vocab * self.hidden

    def params(self) -> int:
        return (
            self.embedding_params()
            + self.layers * self.layer_params()
            + self.hidden  # the final norm
            + self.head_params()
        )

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


def model_architecture(name: str) -> Architecture | None:
    """The architecture of model.name from its config.json, without loading weights or
    converting GGUF: a built-in alias (its converted copy, else the table above), a model
    directory, or a Hugging Face id already in the cache (config.json alone is fetched when
    the machine is online). None when it cannot be told (a .gguf file not yet converted)."""
    from openrft.models.load import ALIASES, COMPLETE_MARKER
    from openrft.paths import cache_dir

    directory: Path | None = None
    if name in ALIASES:
        converted = cache_dir() / "models" / name
        if (converted / COMPLETE_MARKER).exists():
            directory = converted
        else:
            return Architecture.from_config(ALIAS_ARCHITECTURES[name])
    elif Path(name).expanduser().is_dir():
        directory = Path(name).expanduser()
    else:
        from openrft.models.hub import cached_snapshot, hf_cache_dir, hf_offline, is_hf_id

        if not is_hf_id(name):
            return None
        directory = cached_snapshot(name, hf_cache_dir())
        if directory is None:
            return _hub_config(name, hf_offline())
    path = directory / "config.json"
    try:
        raw = json.loads(path.read_text())
        stored = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
        stored = stored or sum(f.stat().st_size for f in directory.glob("pytorch_model*.bin"))
        return Architecture.from_config(raw, stored)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _hub_config(repo_id: str, offline: bool) -> Architecture | None:
    if offline:
        return None
    try:
        from huggingface_hub import hf_hub_download

        from openrft.models.hub import hf_cache_dir

        path = hf_hub_download(repo_id, "config.json", cache_dir=hf_cache_dir())
        return Architecture.from_config(json.loads(Path(path).read_text()))
    except Exception:  # offline, gated, not a transformers model: the check is skipped
        return None


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes by term; the phases they add up to; the peak and what dominates it."""

    terms: dict[str, int]  # name -> bytes (see TERM_LABELS)
    phases: dict[str, int]  # loading, rollout, update: the peak of each phase
    peak: int
    dominant: str  # the largest term of the peak phase
    prompt_tokens: int  # the prompt length the estimate assumed
    params: int  # the model's parameter count
    trainable: int  # trainable parameters (LoRA adapters, or every weight)
    device: str  # "cpu" or "cuda": where the policy lives (on cuda, runtime stays on the host)
    notes: tuple[str, ...] = ()


TERM_LABELS = {
    "runtime": "runtime (Python, torch, tokenizer, data)",
    "weights": "weights",
    "adapters": "LoRA adapters",
    "gradients": "gradients",
    "optimizer": "optimizer state (AdamW, 2 moments)",
    "reference": "reference model copy (KL)",
    "sampling_copy": "sampling copy of the weights",
    "kv_cache": "KV cache (rollout batch)",
    "rollout_transient": "rollout prefill and logits",
    "eval_kv_cache": "KV cache (validation batch)",
    "activations": "activations (one micro-batch)",
    "logits": "logit chunks (LM head)",
    "loading": "weight files while loading",
}
STATIC = ("runtime", "weights", "adapters", "gradients", "optimizer", "reference", "sampling_copy")


def estimate_memory(
    config: JobConfig, arch: Architecture, prompt_tokens: int | None = None, device: str = "cpu"
) -> MemoryEstimate:
    """The peak memory of `config`'s run: see the module docstring for the model."""
    rollout, train, algo, lora = config.rollout, config.train, config.algo, config.lora
    prompt = prompt_tokens or config.data.max_prompt_tokens
    weight_bytes = DTYPE_BYTES[config.model.dtype]
    params = arch.params()
    notes: list[str] = []
    if lora.enabled:
        trainable = adapter_params(arch, lora.rank, lora.target_modules)
        trainable_bytes = 4  # peft keeps adapters in float32 over a bf16 base
    else:
        trainable, trainable_bytes = params, weight_bytes
    terms = {
        "runtime": RUNTIME_BYTES,
        "weights": params * weight_bytes,
        "adapters": trainable * trainable_bytes if lora.enabled else 0,
        "gradients": trainable * trainable_bytes,
        "optimizer": 2 * trainable * trainable_bytes,
        "reference": params * weight_bytes if not lora.enabled and algo.kl_coef > 0 else 0,
    }
    on_cpu = device == "cpu"
    terms["sampling_copy"] = _sampling_copy(config, arch, on_cpu)
    # Rollout: G samples of prompts_per_step prompts, rollout.batch_size rows at a time.
    group = rollout.samples_per_prompt
    batch = min(rollout.batch_size, train.prompts_per_step * group)
    compact = _uses_compact(config, arch)
    kv_bytes = 4 if compact and on_cpu else _sample_bytes(config)
    if rollout.engine == "vllm":
        terms["kv_cache"] = terms["rollout_transient"] = 0
        notes.append("vLLM's memory is its own process's (vllm.gpu_memory_utilization)")
    else:
        prompts = max(1, math.ceil(batch / group))
        cached = prompts * prompt + batch * rollout.max_new_tokens if compact else 0
        cached = cached or batch * (prompt + rollout.max_new_tokens)
        terms["kv_cache"] = arch.kv_bytes_per_token(kv_bytes) * cached
        terms["rollout_transient"] = _prefill_bytes(arch, prompts * prompt, batch)
    eval_new = config.eval.max_new_tokens or rollout.max_new_tokens
    eval_batch = min(rollout.batch_size, _eval_rows(config))
    terms["eval_kv_cache"] = 0
    if rollout.engine != "vllm" and eval_batch:
        eval_rows = eval_batch * (prompt + eval_new)
        terms["eval_kv_cache"] = arch.kv_bytes_per_token(kv_bytes) * eval_rows + _prefill_bytes(
            arch, eval_batch * prompt, eval_batch
        )
    # Update: one micro-batch's saved activations and its LM head logits.
    rows_per_mini = max(1, math.ceil(train.prompts_per_step * group / train.mini_batches))
    micro = min(train.micro_batch_size, rows_per_mini)
    packed = config.train.fast_paths == "auto"
    response = rollout.max_new_tokens
    tokens = micro * (prompt + response)
    if packed:
        groups = min(math.ceil(micro / group) + (micro % group != 0), train.prompts_per_step)
        tokens = groups * prompt + micro * response
    # A bf16 model runs its decoder under bf16 autocast (LoRA included): the MLP's values are
    # bf16, but the RMSNorms upcast to float32 and keep their float32 values for backward, so
    # the hidden-sized part is counted at 4 bytes (measured: Qwen2.5-0.5B bf16, docs/preflight.md).
    per_token = ACTIVATION_HIDDEN * arch.hidden * 4 + ACTIVATION_MLP * arch.intermediate * (
        weight_bytes
    )
    terms["activations"] = tokens * arch.layers * per_token
    trained = micro * response
    chunk = min(algo.logprob_chunk_tokens, trained)
    if packed:
        kept = trained * arch.vocab * 4
        # All chunks' logits kept for backward, else one chunk's recomputed there; with a
        # chunk's softmax and its gradient beside them.
        logits = kept if kept <= KEEP_LOGITS_BYTES else chunk * arch.vocab * 4
        terms["logits"] = logits + 2 * chunk * arch.vocab * 4
    else:  # the model's own logits, then float32 log-softmax and its gradient
        terms["logits"] = trained * arch.vocab * (weight_bytes + 3 * 4)
    stored = arch.stored_bytes or params * 4
    terms["loading"] = stored if on_cpu else 0
    static_names = STATIC if on_cpu else tuple(n for n in STATIC if n != "runtime")
    static = sum(terms[n] for n in static_names)
    rollout_peak = max(terms["kv_cache"] + terms["rollout_transient"], terms["eval_kv_cache"])
    update_peak = terms["activations"] + terms["logits"]
    phases = {
        "loading": (terms["runtime"] if on_cpu else 0) + terms["loading"] + terms["weights"],
        "rollout": static + rollout_peak,
        "update": static + update_peak,
    }
    if rollout.max_off_policy_steps > 0:
        phases["update"] += rollout_peak
        notes.append("rollout.max_off_policy_steps > 0: sampling runs beside the update")
    peak_phase = max(phases, key=lambda k: phases[k])
    in_phase = {
        "loading": ("runtime", "loading", "weights"),
        "rollout": (*static_names, "kv_cache", "rollout_transient", "eval_kv_cache"),
        "update": (*static_names, "activations", "logits"),
    }[peak_phase]
    dominant = max(in_phase, key=lambda k: terms[k])
    return MemoryEstimate(
        terms=terms,
        phases=phases,
        peak=phases[peak_phase],
        dominant=dominant,
        prompt_tokens=prompt,
        params=params,
        trainable=trainable,
        device="cpu" if on_cpu else "cuda",
        notes=tuple(notes),
    )


def adapter_params(arch: Architecture, rank: int, targets: tuple[str, ...]) -> int:
    """LoRA's A and B matrices: rank x (in + out) for each targeted linear layer."""
    shapes = arch.linear_shapes()
    chosen = set(LINEARS) if "all-linear" in targets else {t.split(".")[-1] for t in targets}
    per_layer = sum(rank * (a + b) for name, (a, b) in shapes.items() if name in chosen)
    head = rank * (arch.hidden + arch.vocab) if "lm_head" in chosen else 0
    return arch.layers * per_layer + head


def _uses_compact(config: JobConfig, arch: Architecture) -> bool:
    rollout = config.rollout
    return (
        rollout.engine == "hf"
        and config.train.fast_paths == "auto"
        and rollout.decoder != "transformers"
        and arch.model_type in COMPACT_TYPES
    )


def _sample_bytes(config: JobConfig) -> int:
    return 2 if config.rollout.dtype == "bfloat16" else DTYPE_BYTES[config.model.dtype]


def _sampling_copy(config: JobConfig, arch: Architecture, on_cpu: bool) -> int:
    """The compact decoder's fused copy (float32 on the CPU: plus its MKL-packed form and a
    packed LM head; bf16: o/gate/up/down packed only), or a merged bf16 sampling copy."""
    if config.rollout.engine != "hf":
        return 0
    sample = _sample_bytes(config)
    layers = arch.layers * arch.layer_params() * sample
    if _uses_compact(config, arch):
        head = arch.vocab * arch.hidden * sample if on_cpu else 0  # the packed LM head
        packed = layers if on_cpu and sample == 4 else 0
        recast = sample != DTYPE_BYTES[config.model.dtype]
        embeddings = (arch.embedding_params() + arch.head_params()) * sample if recast else 0
        return layers + packed + head + embeddings
    if config.rollout.dtype == "bfloat16" and config.model.dtype != "bfloat16":
        return arch.params() * 2
    if config.lora.enabled and config.rollout.dtype == "bfloat16":
        return arch.params() * 2  # a merged copy: LoRA folded into the bf16 weights
    return 0


def _prefill_bytes(arch: Architecture, prompt_tokens: int, rows: int) -> int:
    """One layer's prefill intermediates (float32) and a decode step's logits, softmax and
    sampling probabilities for `rows` rows."""
    layer = prompt_tokens * (4 * arch.hidden + 3 * arch.intermediate) * 4
    return layer + 3 * rows * arch.vocab * 4


def _eval_rows(config: JobConfig) -> int:
    prompts = config.eval.max_prompts or config.data.validation_size
    if config.eval.baseline_prompts:
        prompts = max(prompts, config.eval.baseline_prompts)
    return prompts * config.eval.samples_per_prompt
