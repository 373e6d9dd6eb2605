"""The transformers rollout engine on the tiny Llama, with each decoder: groups, greedy
parity with `model.generate`, left padding, caps, seeds, chunking, stop strings and
end-of-turn ids."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch

from openrft.models.load import load_model
from openrft.rollout.engine import RolloutEngine
from openrft.rollout.hf_engine import HFEngine, end_of_turn_ids, left_pad
from openrft.types import Completion, SamplingParams

TEXTS = [
    "the movie was great",
    "a dull and boring film with a weak plot and more",
    "what is 12 plus 30 ?",
    "0",
    "system user assistant you are a helpful assistant",
]
MAX_NEW = 24


def _reinit(model: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Wider random weights: the default init makes greedy decoding repeat one token."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir))
    return _reinit(model).eval(), tokenizer


@pytest.fixture(scope="module", params=["compact", "transformers"])
def engine(loaded, request) -> HFEngine:
    """Every engine test runs with both decoders: the same contract, the same tokens."""
    model, tokenizer = loaded
    return HFEngine(model, tokenizer, batch_size=64, decoder=request.param)


@pytest.fixture(scope="module")
def prompts(loaded) -> list[list[int]]:
    _, tokenizer = loaded
    encoded = [tokenizer.encode(text) for text in TEXTS]
    assert len({len(p) for p in encoded}) == len(encoded)  # all lengths differ
    return encoded


def greedy(n: int = 1, max_new_tokens: int = MAX_NEW, **kwargs) -> SamplingParams:
    return SamplingParams(n=n, temperature=0.0, max_new_tokens=max_new_tokens, **kwargs)


def hf_greedy(model, tokenizer, prompt: list[int], end_ids, max_new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(end_ids),
        pad_token_id=tokenizer.pad_token_id,
    )
    return out[0, len(prompt) :].tolist()


def test_engine_satisfies_the_protocol(engine):
    as_protocol: RolloutEngine = engine  # what the training loop holds
    assert callable(as_protocol.generate)
    assert callable(as_protocol.sync_weights)


@pytest.mark.parametrize("n", [1, 3])
def test_generate_returns_one_group_of_n_per_prompt(engine, prompts, n):
    groups = engine.generate(prompts, SamplingParams(n=n, max_new_tokens=6, seed=1))
    assert len(groups) == len(prompts)
    for group in groups:
        assert len(group) == n
        for completion in group:
            assert isinstance(completion, Completion)
            assert 1 <= len(completion.token_ids) <= 6
            assert completion.finish_reason in ("stop", "length")
            assert isinstance(completion.text, str)


def test_no_prompts_no_groups(engine):
    assert engine.generate([], greedy()) == []


def test_greedy_matches_model_generate_token_for_token(loaded, engine, prompts):
    model, tokenizer = loaded
    groups = engine.generate(prompts, greedy())
    for prompt, (completion,) in zip(prompts, groups, strict=True):
        expected = hf_greedy(model, tokenizer, prompt, engine.end_token_ids, MAX_NEW)
        assert list(completion.token_ids) == expected
        assert completion.text == tokenizer.decode(expected, skip_special_tokens=True)


def test_greedy_outputs_are_not_degenerate(engine, prompts):
    # Guards the parity tests: identical repeated tokens would make them trivially pass.
    groups = engine.generate(prompts, greedy())
    assert len({g[0].token_ids for g in groups}) == len(prompts)
    assert all(len(set(g[0].token_ids)) > 3 for g in groups)


def test_left_padding_in_a_batch_does_not_change_greedy_results(engine, prompts):
    batched = engine.generate(prompts, greedy(n=2))
    for prompt, group in zip(prompts, batched, strict=True):
        (alone,) = engine.generate([prompt], greedy())
        assert group == [alone[0], alone[0]]


@pytest.mark.parametrize("max_new_tokens", [1, 2, 7])
def test_max_new_tokens_is_respected(engine, prompts, max_new_tokens):
    groups = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=max_new_tokens, seed=3))
    for group in groups:
        for completion in group:
            assert len(completion.token_ids) <= max_new_tokens
            if completion.finish_reason == "length":
                assert len(completion.token_ids) == max_new_tokens


def test_finish_reasons_match_the_tokens(engine, prompts):
    groups = engine.generate(prompts, SamplingParams(n=8, max_new_tokens=32, seed=0))
    reasons = [c.finish_reason for g in groups for c in g]
    assert "stop" in reasons and "length" in reasons  # both kinds occur with this seed
    for group in groups:
        for completion in group:
            ends = [t in engine.end_token_ids for t in completion.token_ids]
            if completion.finish_reason == "stop":
                assert ends[-1] and not any(ends[:-1])  # stopped at the first end token
            else:
                assert not any(ends)
                assert len(completion.token_ids) == 32


def test_greedy_hitting_the_cap_reports_length(engine, prompts):
    groups = engine.generate(prompts, greedy(max_new_tokens=5))
    full = engine.generate(prompts, greedy())
    for (short,), (long,) in zip(groups, full, strict=True):
        assert short.finish_reason == "length"
        assert short.token_ids == long.token_ids[:5]


def test_seeded_run_is_reproducible_and_seeds_differ(engine, prompts):
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=123)
    first = engine.generate(prompts, params)
    assert engine.generate(prompts, params) == first
    other = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=12, seed=124))
    assert other != first


def test_samples_within_a_group_differ(engine, prompts):
    groups = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=12, seed=5))
    for group in groups:
        assert len({c.token_ids for c in group}) > 1


def test_sampling_with_top_k_one_is_greedy(engine, prompts):
    sampled = engine.generate(prompts, SamplingParams(n=2, temperature=1.5, top_k=1, seed=9))
    expected = engine.generate(prompts, greedy(n=2, max_new_tokens=64))
    assert sampled == expected


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5])
def test_small_batch_size_returns_everything_in_order(loaded, prompts, batch_size):
    model, tokenizer = loaded
    reference = HFEngine(model, tokenizer, batch_size=64).generate(prompts, greedy(n=2))
    small = HFEngine(model, tokenizer, batch_size=batch_size)
    assert small.generate(prompts, greedy(n=2)) == reference


def test_small_batch_size_sampling_is_reproducible(loaded, prompts):
    model, tokenizer = loaded
    engine = HFEngine(model, tokenizer, batch_size=4)
    params = SamplingParams(n=2, max_new_tokens=8, seed=11)
    groups = engine.generate(prompts, params)
    assert len(groups) == len(prompts) and all(len(g) == 2 for g in groups)
    assert engine.generate(prompts, params) == groups


def _ascii_word(text: str, start: int = 3) -> str:
    """A short stop string that greedy output contains, away from its start."""
    for match in re.finditer(r"[A-Za-z0-9]{2,}", text):
        if match.start() >= start:
            return match.group()
    raise AssertionError(f"no ASCII word in {text!r}")


def test_stop_string_cuts_the_text_and_stops(engine, prompts):
    (full,) = engine.generate([prompts[0]], greedy())[0]
    stop = _ascii_word(full.text)
    cut = full.text.find(stop)
    (stopped,) = engine.generate([prompts[0]], greedy(stop=(stop,)))[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[:cut]
    assert stop not in stopped.text
    assert len(stopped.token_ids) < len(full.token_ids)
    assert stopped.token_ids == full.token_ids[: len(stopped.token_ids)]
    # Generation stopped on the token that completed the stop string.
    decode = engine.tokenizer.decode
    assert stop in decode(stopped.token_ids, skip_special_tokens=True)
    assert stop not in decode(stopped.token_ids[:-1], skip_special_tokens=True)


def test_stop_string_only_stops_the_rows_that_hit_it(engine, prompts):
    full = engine.generate(prompts, greedy())
    stop = _ascii_word(full[0][0].text)
    groups = engine.generate(prompts, greedy(stop=(stop,)))
    for (before,), (after,) in zip(full, groups, strict=True):
        if stop in before.text:
            assert after.finish_reason == "stop"
            assert after.text == before.text[: before.text.find(stop)]
        else:
            assert after == before


def test_stop_string_absent_changes_nothing(engine, prompts):
    plain = engine.generate(prompts, greedy())
    assert engine.generate(prompts, greedy(stop=("\x00never\x00",))) == plain


def test_generate_restores_training_mode(loaded, prompts):
    model, tokenizer = loaded
    engine = HFEngine(model, tokenizer)
    model.train()
    try:
        engine.generate(prompts[:1], greedy(max_new_tokens=2))
        assert model.training
    finally:
        model.eval()
    engine.generate(prompts[:1], greedy(max_new_tokens=2))
    assert not model.training


def test_sync_weights_switches_the_sampled_model(tiny_model_dir, loaded, prompts):
    model, tokenizer = loaded
    other, _ = load_model(str(tiny_model_dir))
    other = _reinit(other, seed=1).eval()
    engine = HFEngine(model, tokenizer)
    before = engine.generate(prompts, greedy())
    engine.sync_weights(other, version=1)
    after = engine.generate(prompts, greedy())
    assert after != before
    assert after == HFEngine(other, tokenizer).generate(prompts, greedy())


def test_end_of_turn_ids_include_the_tokenizer_eos(loaded, engine):
    model, tokenizer = loaded
    ids = end_of_turn_ids(model, tokenizer)
    assert tokenizer.eos_token_id in ids
    vocab = tokenizer.get_vocab()
    assert vocab["<|im_end|>"] in ids
    assert vocab["<|endoftext|>"] in ids
    assert vocab["<|im_start|>"] not in ids
    assert engine.end_token_ids == ids


def test_end_of_turn_ids_include_the_generation_config_eos_list(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir))
    model.generation_config.eos_token_id = [7, 9]
    ids = end_of_turn_ids(model, tokenizer)
    assert {7, 9, tokenizer.eos_token_id} <= ids
    model.generation_config.eos_token_id = 11
    assert 11 in end_of_turn_ids(model, tokenizer)
    model.generation_config.eos_token_id = None
    assert tokenizer.eos_token_id in end_of_turn_ids(model, tokenizer)


@pytest.mark.parametrize(
    ("prompts", "pad_id", "ids", "mask"),
    [
        ([[5]], 0, [[5]], [[1]]),
        ([[1, 2, 3], [4]], 0, [[1, 2, 3], [0, 0, 4]], [[1, 1, 1], [0, 0, 1]]),
        (
            [[7], [8, 9], [1, 2, 3]],
            99,
            [[99, 99, 7], [99, 8, 9], [1, 2, 3]],
            [[0, 0, 1], [0, 1, 1], [1, 1, 1]],
        ),
        ([(4, 5), (6, 7)], 0, [[4, 5], [6, 7]], [[1, 1], [1, 1]]),  # tuples, no padding
    ],
)
def test_left_pad(prompts, pad_id, ids, mask):
    ids_P_L, mask_P_L = left_pad(prompts, pad_id, torch.device("cpu"))
    assert ids_P_L.shape == mask_P_L.shape == (len(prompts), max(len(p) for p in prompts))
    assert ids_P_L.dtype == mask_P_L.dtype == torch.long
    assert ids_P_L.tolist() == ids
    assert mask_P_L.tolist() == mask
    assert mask_P_L.sum(dim=1).tolist() == [len(p) for p in prompts]


def test_stop_string_longer_than_sixteen_tokens_stops(tiny_model_dir):
    # The default-initialised tiny model repeats one word under greedy decoding.
    model, tokenizer = load_model(str(tiny_model_dir))
    engine = HFEngine(model.eval(), tokenizer)
    prompt = tokenizer.encode(TEXTS[0])
    (full,) = engine.generate([prompt], greedy())[0]
    stop = tokenizer.decode(full.token_ids[:17], skip_special_tokens=True)
    assert "\ufffd" not in stop and full.finish_reason == "length"
    (stopped,) = engine.generate([prompt], greedy(stop=(stop,)))[0]
    assert stopped.text == ""  # cut before the stop string, which starts the completion
    assert stopped.finish_reason == "stop"
    assert len(stopped.token_ids) == 17


def test_reported_logprobs_match_the_models_own_scoring(loaded, engine, prompts):
    """logprobs=True: each sampled token's log-prob under the raw model (the plain twin:
    a transformers forward over prompt + completion), the tokens unchanged by asking."""
    model, _ = loaded
    params = SamplingParams(n=2, temperature=1.3, max_new_tokens=10, seed=5)
    plain = engine.generate(prompts[:3], params)
    scored = engine.generate(prompts[:3], replace(params, logprobs=True))
    for prompt, group, same in zip(prompts, scored, plain, strict=False):
        for completion, twin in zip(group, same, strict=True):
            assert completion.token_ids == twin.token_ids and twin.logprobs is None
            assert len(completion.logprobs) == len(completion.token_ids)
            ids = torch.tensor([prompt + list(completion.token_ids)])
            with torch.no_grad():
                logits = model(ids).logits[0, len(prompt) - 1 : -1].double()
            expected = logits.log_softmax(-1).gather(-1, ids[0, len(prompt) :, None])[:, 0]
            assert torch.allclose(torch.tensor(completion.logprobs).double(), expected, atol=1e-4)
