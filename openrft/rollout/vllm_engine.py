"""Rollouts from a vLLM server (the GPU engine), with the trainer's weights synced every step.

The engine speaks vLLM's OpenAI-compatible HTTP API, so vLLM lives in its own process and
virtual environment (openrft.rollout.vllm_server starts it, or `vllm.url` names a running one):
- generate: one /v1/completions request per step, token-id prompts in and token ids out;
- sync_weights with LoRA: the adapter is saved and hot-loaded under a new name
  (/v1/load_lora_adapter), the previous one unloaded; with full weights: saved as safetensors
  and reloaded in place (/collective_rpc reload_weights), then the prefix cache is reset;
- after every sync, a probe: vLLM's log-probs of a fixed token sequence must match the
  trainer's (within vllm.probe_tolerance) and must have moved when the trainer's moved. A sync
  that silently did not apply (a known failure of LoRA-to-vLLM pipelines) stops the job.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import httpx
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from openrft.errors import RolloutError, WeightSyncError
from openrft.rollout.engine import OnGroup, completion_from_tokens
from openrft.rollout.probe import TrainerLogprobs, WeightSyncProbe
from openrft.rollout.vllm_server import VLLMServer, log_tail
from openrft.types import Completion, SamplingParams

MAX_PROBE_TOKENS = 256
# vLLM's probe log-probs changed by less than this: not moved (batching makes them wobble).
STILL = 1e-7
__all__ = ["VLLMEngine", "WeightSyncError", "sampled_logprobs"]


class VLLMEngine:
    """The RolloutEngine protocol over a vLLM server that serves `base_name`."""

    def __init__(
        self,
        server: VLLMServer,
        base_name: str,
        tokenizer: PreTrainedTokenizerBase,
        end_token_ids: frozenset[int],
        sync_dir: Path,
        probe_ids: Sequence[int],
        trainer_logprobs: TrainerLogprobs,
        probe_tolerance: float = 0.1,
        request_timeout_s: float = 3600.0,
    ):
        self.server = server
        self.base_name = base_name
        self.served_name = base_name  # the base model, or the newest LoRA adapter's name
        self.tokenizer = tokenizer
        self.end_token_ids = end_token_ids
        self.sync_dir = sync_dir
        self.probe_ids = list(probe_ids)[:MAX_PROBE_TOKENS]
        if len(self.probe_ids) < 2:
            raise RolloutError("the weight-sync probe needs at least 2 tokens")
        self.trainer_logprobs = trainer_logprobs
        self.probe = WeightSyncProbe("vLLM", probe_tolerance, STILL, "vllm.probe_tolerance")
        self.client = httpx.Client(base_url=server.url, timeout=request_timeout_s)
        self.version = 0  # syncs done; names the weight directories and LoRA adapters
        self.session = uuid.uuid4().hex[:8]  # adapter names stay unique on a shared server
        self.policy_version = 0  # the trainer's update count of the weights vLLM serves
        self.description = f"vLLM at {server.url}"

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        on_group: OnGroup | None = None,
    ) -> list[list[Completion]]:
        """One request for every prompt (one seed, as the in-process engine): its groups are
        handed to `on_group` when the request returns, so grading overlaps nothing here."""
        groups = self._generate(prompts, params)
        if on_group is not None:
            for index, group in enumerate(groups):
                on_group(index, group)
        return groups

    def _generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams
    ) -> list[list[Completion]]:
        if not prompts:
            return []
        if params.temperature == 0 and params.n > 1:
            # vLLM refuses n > 1 when greedy; the n greedy completions are one, repeated.
            single = self._generate(prompts, replace(params, n=1))
            return [group * params.n for group in single]
        body = {
            "model": self.served_name,
            "prompt": [list(p) for p in prompts],
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k if params.top_k > 0 else None,
            "max_tokens": params.max_new_tokens,
            "stop": list(params.stop) or None,
            "stop_token_ids": sorted(self.end_token_ids),
            "seed": params.seed,
            "return_token_ids": True,
            "logprobs": 0,  # the sampled token's log-prob: the trainer corrects the mismatch
        }
        choices = self._post("/v1/completions", body)["choices"]
        if len(choices) != len(prompts) * params.n:
            raise RolloutError(
                f"vLLM returned {len(choices)} completions for {len(prompts)} prompts x {params.n}"
            )
        groups: list[list[Completion]] = [[] for _ in prompts]
        # With several prompts and n samples each, choice i answers prompt i // n.
        for choice in sorted(choices, key=lambda c: c["index"]):
            token_ids = list(choice["token_ids"])
            reason = "length" if choice["finish_reason"] == "length" else "stop"
            logprobs = sampled_logprobs(choice, len(token_ids))
            groups[choice["index"] // params.n].append(
                completion_from_tokens(self.tokenizer, token_ids, reason, params.stop, logprobs)
            )
        return groups

    def sync_weights(self, policy: nn.Module, version: int) -> dict[str, float]:
        """Push `policy`'s weights to vLLM and check with the probe that they arrived."""
        self.version += 1
        target = self.sync_dir / f"weights-{self.version}"
        if target.exists():
            shutil.rmtree(target)
        lora = hasattr(policy, "peft_config")
        policy.save_pretrained(target)  # with LoRA, only the adapter (a few MB)
        if lora:
            name = f"openrft-{self.session}-{self.version}"
            self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(target)})
            previous, self.served_name = self.served_name, name
            if previous != self.base_name:
                self._post("/v1/unload_lora_adapter", {"lora_name": previous})
        else:
            rpc = {"method": "reload_weights", "kwargs": {"weights_path": str(target)}}
            self._post("/collective_rpc", rpc)
            self._post("/reset_prefix_cache", {})  # cached KV blocks hold the old weights
        shutil.rmtree(self.sync_dir / f"weights-{self.version - 1}", ignore_errors=True)
        self.policy_version = version
        return self.check_probe(policy)

    def check_probe(self, policy: nn.Module) -> dict[str, float]:
        """Compare vLLM's log-probs of the probe with the trainer's (WeightSyncProbe)."""
        trainer = self.trainer_logprobs(policy, self.probe_ids)
        return self.probe.check(trainer, self.engine_logprobs(), self.version)

    def engine_logprobs(self) -> torch.Tensor:
        """vLLM's log-prob of each probe token after the first, given the tokens before it."""
        body = {
            "model": self.served_name,
            "prompt": self.probe_ids,
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": 0,  # the log-prob of the prompt's own token at each position
        }
        entries = self._post("/v1/completions", body)["choices"][0]["prompt_logprobs"][1:]
        tokens = self.probe_ids[1:]
        return torch.tensor(
            [entry[str(token)]["logprob"] for entry, token in zip(entries, tokens, strict=True)],
            dtype=torch.float64,
        )

    def close(self) -> None:
        self.client.close()
        self.server.close()

    def _post(self, path: str, body: dict) -> dict:
        try:
            response = self.client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise RolloutError(f"vLLM at {self.server.url}{path}: {exc}{self._log()}") from exc
        if response.status_code != 200:
            raise RolloutError(
                f"vLLM at {self.server.url}{path} answered {response.status_code}: "
                f"{response.text[:2000]}{self._log()}"
            )
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return {}  # the adapter routes answer with plain text

    def _log(self) -> str:
        path = self.server.log_path
        return "" if path is None else f"\nthe server's log ({path}) ends:\n{log_tail(path)}"


def sampled_logprobs(choice: dict, tokens: int) -> list[float]:
    """The log-prob vLLM gave each sampled token (before temperature and top-p: vLLM's raw
    log-probs, the distribution the trainer computes), checked against the token count."""
    logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
    if logprobs is None or len(logprobs) != tokens or any(x is None for x in logprobs):
        got = "none" if logprobs is None else f"{len(logprobs)}"
        raise RolloutError(
            f"vLLM returned {got} sampled-token log-probs for a completion of {tokens} tokens "
            f"(choice {choice.get('index')}); is the server older than the pinned vLLM?"
        )
    return [max(float(x), -1e4) for x in logprobs]  # -inf (a token of probability 0) capped
