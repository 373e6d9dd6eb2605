"""The vLLM rollout engine against a real vLLM server on loopback (vLLM's CPU build here).

These tests need vLLM in its own environment (`make vllm`; see tests/vllm_env.py) and are
skipped without one. The server starts once for the module (about 50 s on 2 cores)."""

from __future__ import annotations

import shutil
from pathlib import Path

import peft
import pytest
import torch
from tiny_model import build_tiny_tokenizer, make_tiny_model_dir
from torch import nn
from transformers import AutoModelForCausalLM
from vllm_env import VLLM_COMMAND, needs_vllm

from openrft.errors import RolloutError
from openrft.metrics.names import PROBE_GAP, PROBE_SHIFT
from openrft.rollout.hf_engine import HFEngine, end_of_turn_ids
from openrft.rollout.vllm_engine import VLLMEngine, WeightSyncError
from openrft.rollout.vllm_server import (
    VLLMServer,
    free_port,
    log_tail,
    serve_arguments,
    start_server,
)
from openrft.train.forward import sequence_logprobs as trainer_logprobs
from openrft.types import SamplingParams

# -- without a server ---------------------------------------------------------------------


def test_serve_arguments_round_the_lora_rank_up_to_one_vllm_accepts(tmp_path):
    args = serve_arguments(
        tmp_path, 8000, served_name="m", lora_rank=12, dtype="float32",
        gpu_memory_utilization=0.5, max_model_len=0, seed=3, extra_args=("--enforce-eager",),
    )  # fmt: skip
    assert args[args.index("--max-lora-rank") + 1] == "16"
    assert args[args.index("--model") + 1] == str(tmp_path)
    assert "--max-model-len" not in args and args[-1] == "--enforce-eager"
    full = serve_arguments(
        tmp_path, 8000, served_name="m", lora_rank=None, dtype="bfloat16",
        gpu_memory_utilization=0.5, max_model_len=4096, seed=3,
    )  # fmt: skip
    assert "--enable-lora" not in full and full[full.index("--max-model-len") + 1] == "4096"
    with pytest.raises(RolloutError, match="up to 512"):
        serve_arguments(
            tmp_path, 1, served_name="m", lora_rank=1024, dtype="float32",
            gpu_memory_utilization=0.5, max_model_len=0, seed=0,
        )  # fmt: skip


def test_a_missing_command_names_the_config_field(tmp_path):
    with pytest.raises(RolloutError, match="vllm.command = 'no-such-vllm-binary serve'"):
        start_server("no-such-vllm-binary serve", ["--port", "1"], tmp_path / "log", 5)


def test_a_server_that_exits_while_starting_shows_its_log(tmp_path):
    with pytest.raises(RolloutError, match="exited with code 3") as info:
        start_server("sh -c 'echo out of memory; exit 3'", ["--port", "1"], tmp_path / "log", 30)
    assert "out of memory" in str(info.value)


def test_a_server_that_never_answers_times_out(tmp_path):
    with pytest.raises(RolloutError, match="did not answer"):
        start_server("sh -c 'sleep 60' --", ["--port", str(free_port())], tmp_path / "log", 2)


def test_a_log_tail_names_the_root_cause_and_a_known_fix(tmp_path):
    log = tmp_path / "vllm.log"
    lines = [
        "(APIServer pid=1) WARNING [utils.py:9] failed with error: limit exceeds maximum",
        "(Worker pid=2) ERROR 12-05 [executor.py:1063] RuntimeError: CPU Generator does not "
        "use offset",
        *[f"(EngineCore pid=3) ERROR [core.py:1] follow-on traceback line {i}" for i in range(40)],
        "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.",
    ]
    log.write_text("\n".join(lines))
    tail = log_tail(log)
    assert "follow-on traceback line 39" in tail and "line 5\n" not in tail  # the last 25
    assert "further up the log:\nRuntimeError: CPU Generator does not use offset" in tail
    assert "--max-num-batched-tokens" in tail  # what to do about this one
    log.write_text("INFO starting\nValueError: bad flag --foo\n")
    assert "further up" not in log_tail(log)  # the cause is in the tail already
    assert log_tail(tmp_path / "missing.log") == "(no log)"


# -- against a real vLLM server -----------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A vLLM server for a tiny Llama (head_dim 32, which vLLM's CPU attention supports)."""
    if VLLM_COMMAND is None:
        pytest.skip("no vLLM environment (make vllm)")
    model_dir = make_tiny_model_dir(tmp_path_factory.mktemp("vllm-model"), head_dim=32)
    args = serve_arguments(
        model_dir, free_port(), served_name="tiny", lora_rank=8, dtype="float32",
        gpu_memory_utilization=0.3, max_model_len=512, seed=0,
    )  # fmt: skip
    server = start_server(VLLM_COMMAND, args, tmp_path_factory.mktemp("vllm-log") / "vllm.log", 600)
    yield server, model_dir
    server.close()


def make_engine(served, tmp_path, probe_ids, model) -> VLLMEngine:
    server, _ = served
    tokenizer = build_tiny_tokenizer()
    client_side = VLLMServer(server.url, None, server.log_path)  # close() leaves it running
    return VLLMEngine(
        client_side,
        "tiny",
        tokenizer,
        end_of_turn_ids(model, tokenizer),
        tmp_path,
        probe_ids,
        trainer_logprobs,
    )


def lora_engine(served, tmp_path) -> tuple[peft.PeftModel, list[list[int]], VLLMEngine]:
    """A LoRA policy on the served model, the test prompts, and an engine probing the first."""
    _, model_dir = served
    policy = lora_policy(model_dir)
    prompts = prompts_for(build_tiny_tokenizer())
    return policy, prompts, make_engine(served, tmp_path, prompts[0], policy)


def prompts_for(tokenizer) -> list[list[int]]:
    chats = [[{"role": "user", "content": text}] for text in ("the movie was", "what is 12")]
    return [
        tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)[
            "input_ids"
        ]
        for chat in chats
    ]


def lora_policy(model_dir: Path) -> peft.PeftModel:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
    return peft.get_peft_model(model, config)


def randomize_lora(policy: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


@needs_vllm
def test_greedy_completions_match_the_in_process_engine_before_and_after_a_lora_sync(
    served, tmp_path
):
    policy, prompts, engine = lora_engine(served, tmp_path)
    local = HFEngine(policy, engine.tokenizer)
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
    assert engine.generate(prompts, greedy) == local.generate(prompts, greedy)

    first = engine.sync_weights(policy, version=1)
    assert first[PROBE_GAP] < 1e-3  # the same float32 model on both sides

    randomize_lora(policy, seed=1)
    second = engine.sync_weights(policy, version=2)
    local.sync_weights(policy, version=2)
    assert second[PROBE_GAP] < 1e-3 and second[PROBE_SHIFT] > 1e-3
    assert engine.generate(prompts, greedy) == local.generate(prompts, greedy)
    assert not (tmp_path / "weights-1").exists()  # only the newest adapter is kept on disk


@needs_vllm
def test_sampling_gives_n_seeded_completions_per_prompt(served, tmp_path):
    policy, prompts, engine = lora_engine(served, tmp_path)
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=11)
    groups = engine.generate(prompts, params)
    assert [len(group) for group in groups] == [4, 4]
    assert len({c.token_ids for c in groups[0]}) > 1  # the samples of a group differ
    assert engine.generate(prompts, params) == groups  # the seed fixes them
    for completion in groups[0] + groups[1]:
        assert completion.finish_reason in ("stop", "length")
        if completion.finish_reason == "length":
            assert len(completion.token_ids) == 8
        else:  # the end-of-turn token is kept: the trainer learns to stop
            assert completion.token_ids[-1] in engine.end_token_ids


@needs_vllm
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampled_logprobs_are_the_trainers_raw_logprobs(served, tmp_path, temperature):
    # vLLM reports the log-prob of each sampled token under the raw model (before temperature),
    # which is what the trainer computes: the two agree for the same float32 weights.
    policy, prompts, engine = lora_engine(served, tmp_path)
    randomize_lora(policy, seed=4)
    engine.sync_weights(policy, version=1)
    params = SamplingParams(n=3, temperature=temperature, max_new_tokens=10, seed=5)
    for prompt, group in zip(prompts, engine.generate(prompts, params), strict=True):
        for completion in group:
            assert len(completion.logprobs) == len(completion.token_ids)
            trainer = trainer_logprobs(policy, [*prompt, *completion.token_ids])
            expected = trainer[len(prompt) - 1 :]
            got = torch.tensor(completion.logprobs, dtype=torch.float64)
            torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)


@needs_vllm
def test_a_sync_that_does_not_reach_vllm_stops_the_job(served, tmp_path, monkeypatch):
    policy, _, engine = lora_engine(served, tmp_path / "sync")
    randomize_lora(policy, seed=2)
    engine.sync_weights(policy, version=1)
    stale = shutil.copytree(tmp_path / "sync" / "weights-1", tmp_path / "stale")
    # The load "succeeds" but vLLM gets the previous adapter, as in the LoRA-sync bugs users
    # report (a cached or mis-pathed adapter): only the probe can tell.
    real_post = engine._post

    def load_stale(path, body):
        if path == "/v1/load_lora_adapter":
            body = body | {"lora_path": str(stale)}
        return real_post(path, body)

    monkeypatch.setattr(engine, "_post", load_stale)
    randomize_lora(policy, seed=3)
    with pytest.raises(WeightSyncError, match="still sampling from the previous weights"):
        engine.sync_weights(policy, version=2)


@needs_vllm
def test_full_weights_are_reloaded_in_place(served, tmp_path):
    _, model_dir = served
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = build_tiny_tokenizer()
    prompts = prompts_for(tokenizer)
    engine = make_engine(served, tmp_path, prompts[0], model)
    try:
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
        stats = engine.sync_weights(model, version=1)
        assert stats[PROBE_GAP] < 1e-3
        greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
        assert engine.generate(prompts, greedy) == HFEngine(model, tokenizer).generate(
            prompts, greedy
        )
    finally:  # the other tests expect the served model's own weights
        fresh = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        engine.sync_weights(fresh, version=2)


@needs_vllm
def test_a_bad_request_names_the_server_and_its_answer(served, tmp_path):
    policy, prompts, engine = lora_engine(served, tmp_path)
    with pytest.raises(RolloutError, match="answered 400"):
        engine.generate([list(range(5))], SamplingParams(n=1, max_new_tokens=100_000))


@needs_vllm
def test_greedy_episodes_match_the_in_process_engines_kv_continuation(served, tmp_path):
    """Multi-turn on vLLM: each turn a token-id prompt of the whole history (no
    re-tokenization). Greedy, its episodes are the in-process engine's, whose history lives
    in its KV cache."""
    from concurrent.futures import Future

    from openrft.rollout.episodes import Continuation, generate_by_reprefill

    policy, prompts, engine = lora_engine(served, tmp_path)
    local = HFEngine(policy, engine.tokenizer)

    def scripted(sampled: dict):
        def respond(seq: int, turn) -> Future:
            sampled.setdefault(seq, []).append(turn.token_ids)
            future: Future = Future()
            more = Continuation((20 + seq, 21, 22), 6) if len(sampled[seq]) < 3 else None
            future.set_result(more)
            return future

        return respond

    greedy = SamplingParams(n=2, temperature=0.0, max_new_tokens=6)
    on_vllm, in_process = {}, {}
    generate_by_reprefill(engine, prompts, greedy, scripted(on_vllm))
    local.generate_episodes(prompts, greedy, scripted(in_process))
    assert on_vllm == in_process and all(len(turns) == 3 for turns in on_vllm.values())
