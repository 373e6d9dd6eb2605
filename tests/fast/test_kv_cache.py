"""The in-place KV cache against its plain twin, transformers' DynamicCache."""

from __future__ import annotations

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from openrft.compat.transformers import MIN_ROOM, PreallocatedLayer
from openrft.fast.kv_cache import decoding_cache


def test_decoding_with_the_in_place_cache_gives_the_plain_caches_logits():
    config = LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    prompt = torch.randint(0, 40, (3, 7))
    steps = torch.randint(0, 40, (3, MIN_ROOM + 5))  # past the first buffer: it must grow
    results = []
    with torch.no_grad():
        for cache in (decoding_cache(in_place=True), decoding_cache(in_place=False)):
            logits = [model(input_ids=prompt, past_key_values=cache, use_cache=True).logits]
            cache.batch_repeat_interleave(2)
            for column in range(steps.shape[1]):
                token = steps[:, column : column + 1].repeat_interleave(2, dim=0)
                logits.append(model(input_ids=token, past_key_values=cache).logits)
            cache.batch_select_indices(torch.tensor([0, 3, 5]))
            logits.append(model(input_ids=steps[:, :1], past_key_values=cache).logits)
            results.append((logits, cache))
    (fast, fast_cache), (plain, plain_cache) = results
    assert isinstance(fast_cache.layers[0], PreallocatedLayer)
    assert type(plain_cache) is DynamicCache and not isinstance(
        plain_cache.layers[0], PreallocatedLayer
    )
    assert fast_cache.get_seq_length() == plain_cache.get_seq_length() == 7 + MIN_ROOM + 5 + 1
    for got, expected in zip(fast, plain, strict=True):
        torch.testing.assert_close(got, expected)
