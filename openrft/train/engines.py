"""The rollout engine a job's config asks for: in-process (`rollout.engine = "hf"`) or a vLLM
server (`"vllm"`), started here or named by `vllm.url`; and the sampling parameters of a
training step."""

from __future__ import annotations

from pathlib import Path

import httpx
import torch

from openrft.config import JobConfig
from openrft.errors import RolloutError
from openrft.models.load import resolve_model_dir
from openrft.rollout.hf_engine import HFEngine, end_of_turn_ids
from openrft.rollout.vllm_engine import VLLMEngine
from openrft.rollout.vllm_server import VLLMServer, free_port, serve_arguments, start_server
from openrft.train.forward import sequence_logprobs
from openrft.train.policy import Policy
from openrft.types import SamplingParams

SERVED_NAME = "openrft-base"  # the base model's name on a vLLM server openrft starts


def build_engine(
    config: JobConfig, policy: Policy, probe_ids: list[int], run_dir: Path
) -> HFEngine | VLLMEngine:
    """The engine, with a weight-sync probe that scores the probe by the trainer's plain
    forward (the lighter one for a dozen tokens: 45 against 100 ms for bf16 SmolLM2)."""
    rollout = config.rollout
    if rollout.engine == "hf":
        sample_dtype = torch.bfloat16 if rollout.dtype == "bfloat16" else None
        return HFEngine(
            policy.model,
            policy.tokenizer,
            rollout.batch_size,
            sample_dtype,
            rollout.decoder,
            fast_paths=config.train.fast_paths == "auto",
            probe_ids=probe_ids,
            trainer_logprobs=sequence_logprobs,
            probe_tolerance=rollout.probe_tolerance,
        )
    vllm = config.vllm
    if vllm.url:
        server, base_name = VLLMServer(vllm.url.rstrip("/")), served_model(vllm.url)
    else:
        base_name = SERVED_NAME
        arguments = serve_arguments(
            resolve_model_dir(config.model.name),
            free_port(),
            served_name=base_name,
            lora_rank=config.lora.rank if policy.uses_lora else None,
            dtype=config.model.dtype if vllm.dtype == "model" else vllm.dtype,
            gpu_memory_utilization=vllm.gpu_memory_utilization,
            max_model_len=vllm.max_model_len,
            seed=config.train.seed,
            extra_args=vllm.extra_args,
        )
        print(f"starting vLLM: {vllm.command} {' '.join(arguments)}", flush=True)
        server = start_server(vllm.command, arguments, run_dir / "vllm.log", vllm.start_timeout_s)
    engine = VLLMEngine(
        server,
        base_name,
        policy.tokenizer,
        end_of_turn_ids(policy.model, policy.tokenizer),
        sync_dir=run_dir / "vllm-sync",
        probe_ids=probe_ids,
        trainer_logprobs=sequence_logprobs,
        probe_tolerance=vllm.probe_tolerance,
        request_timeout_s=vllm.request_timeout_s,
    )
    try:
        engine.sync_weights(policy.model, version=0)  # the starting weights, probed
    except Exception:
        engine.close()
        raise
    return engine


def served_model(url: str) -> str:
    """The base model a running vLLM server serves (LoRA adapters in /v1/models have a parent)."""
    try:
        models = httpx.get(f"{url.rstrip('/')}/v1/models", timeout=30.0).json()["data"]
        return next(m["id"] for m in models if not m.get("parent"))
    except (httpx.HTTPError, KeyError, StopIteration, ValueError) as exc:
        raise RolloutError(f"vllm.url = {url}: could not list its models: {exc}") from exc


def sampling_params(config: JobConfig, seed: int) -> SamplingParams:
    """How a training step samples (`rollout.*`), seeded."""
    rollout = config.rollout
    return SamplingParams(
        n=rollout.samples_per_prompt,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        top_k=rollout.top_k,
        max_new_tokens=rollout.max_new_tokens,
        stop=rollout.stop,
        seed=seed,
        # Sampled ahead by older weights: the update corrects by the sampler's log-probs.
        logprobs=rollout.max_off_policy_steps > 0,
    )
