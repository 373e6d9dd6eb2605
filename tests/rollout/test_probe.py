"""The weight-sync probe of in-process sampling copies (the compact decoder, a bf16 copy):
after every sync the copy must score a fixed sequence as the trainer does; a copy that
computes another model, or did not take the update, stops the job."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from openrft.errors import WeightSyncError
from openrft.fast import compact
from openrft.fast.compact import CompactDecoder
from openrft.metrics.names import PROBE_GAP, PROBE_SHIFT
from openrft.rollout.hf_engine import HFEngine
from openrft.rollout.probe import WeightSyncProbe
from openrft.train.forward import sequence_logprobs

PROBE_IDS = [5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 45, 49, 53, 57, 61, 65]


def lora_policy(model_dir):
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(0)
    return get_peft_model(base, config)


def update(policy, amount: float = 0.3) -> None:
    """An "optimizer step": every LoRA B moves."""
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.add_(amount)


def engine_for(policy, tokenizer, **kwargs) -> HFEngine:
    return HFEngine(
        policy, tokenizer, batch_size=4, probe_ids=PROBE_IDS, trainer_logprobs=sequence_logprobs,
        **kwargs,
    )  # fmt: skip


def test_the_probe_by_hand():
    probe = WeightSyncProbe("the copy", tolerance=0.1, still=0.0, setting="x.tolerance")
    trainer = torch.tensor([-1.0, -2.0])
    first = probe.check(trainer, torch.tensor([-1.05, -2.05]), version=0)
    assert first[PROBE_GAP] == pytest.approx(0.05) and first[PROBE_SHIFT] != first[PROBE_SHIFT]
    with pytest.raises(WeightSyncError, match=r"by 0.3 nats per token \(x.tolerance = 0.1\)"):
        probe.check(trainer, torch.tensor([-1.3, -2.3]), version=1)
    # The trainer moved by 0.5; the copy's log-probs are bit for bit the last ones: stale.
    with pytest.raises(WeightSyncError, match="still sampling from the previous weights"):
        probe.check(trainer - 0.5, torch.tensor([-1.05, -2.05]), version=2)
    moved = probe.check(trainer - 0.5, torch.tensor([-1.52, -2.52]), version=3)
    assert moved[PROBE_SHIFT] == pytest.approx(0.47)


@pytest.mark.parametrize(
    "settings",
    [{"decoder": "compact"}, {"decoder": "transformers", "sample_dtype": torch.bfloat16}],
    ids=["compact", "bf16-copy"],
)
def test_a_copy_that_follows_every_update_passes_its_probe(
    tiny_model_dir, tiny_tokenizer, settings
):
    policy = lora_policy(tiny_model_dir)
    engine = engine_for(policy, tiny_tokenizer, **settings)
    assert engine.decoder.holds_copy and engine.probe is not None
    for version in (1, 2):
        update(policy)
        metrics = engine.sync_weights(policy, version)
        assert metrics[PROBE_GAP] < 0.1 and metrics[PROBE_SHIFT] > 1e-4
        assert engine.policy_version == version


def test_a_copy_that_misses_an_update_stops_the_job(tiny_model_dir, tiny_tokenizer, monkeypatch):
    policy = lora_policy(tiny_model_dir)
    engine = engine_for(policy, tiny_tokenizer, decoder="compact")
    monkeypatch.setattr(engine.decoder, "sync", lambda policy: None)  # a sync that does nothing
    update(policy, 0.05)
    with pytest.raises(WeightSyncError, match="still sampling from the previous weights"):
        engine.sync_weights(policy, version=1)


def test_sampling_from_the_policy_itself_needs_no_probe(tiny_model_dir, tiny_tokenizer):
    policy = lora_policy(tiny_model_dir)
    engine = engine_for(policy, tiny_tokenizer, decoder="transformers")
    assert not engine.decoder.holds_copy and engine.probe is None
    assert engine.sync_weights(policy, version=1) == {}


def test_an_unmapped_weight_name_is_refused(tiny_model_dir, monkeypatch):
    policy = lora_policy(tiny_model_dir)
    decoder = CompactDecoder(policy, torch.float32)
    real = compact.current_weights

    def renamed(policy, only_changing=False):  # an upstream rename of one parameter
        for name, weight in real(policy, only_changing):
            yield name.replace("mlp.down_proj", "mlp.w2"), weight

    monkeypatch.setattr(compact, "current_weights", renamed)
    with pytest.raises(WeightSyncError, match=r"no place for the policy's weight .*mlp\.w2"):
        decoder.sync(policy)


def test_a_weight_the_policy_does_not_provide_is_refused_at_the_first_sync(
    tiny_model_dir, monkeypatch
):
    policy = lora_policy(tiny_model_dir)
    real = compact.current_weights

    def without_a_norm(policy, only_changing=False):
        for name, weight in real(policy, only_changing):
            if name != "model.norm.weight":
                yield name, weight

    monkeypatch.setattr(compact, "current_weights", without_a_norm)
    with pytest.raises(WeightSyncError, match="model.norm.weight"):
        CompactDecoder(policy, torch.float32)


def test_an_auto_compact_decoder_that_fails_its_first_probe_is_replaced(
    tiny_model_dir, tiny_tokenizer, monkeypatch
):
    policy = lora_policy(tiny_model_dir)
    real = CompactDecoder._logits

    def skewed(self, x):  # a decoder that computes some other model
        logits = real(self, x)
        return logits + torch.linspace(0, 5, logits.shape[-1])

    monkeypatch.setattr(CompactDecoder, "_logits", skewed)
    engine = engine_for(policy, tiny_tokenizer, decoder="auto")
    assert engine.description.startswith("transformers decoder (the compact decoder failed:")
    with pytest.raises(WeightSyncError, match="differ from the trainer's"):
        engine_for(policy, tiny_tokenizer, decoder="compact")  # asked for by name: an error
