"""The fast paths, each beside the plain computation it replaces (its "twin"), each with a
capability check (`unsupported_reason`) and tests that compare it with the twin:

- packed_attention: the training forward over rows packed by prompt (each group's prompt
  once, no padding, attention laid out by segments). Twin: a padded forward through the
  model as transformers and peft run it (openrft.train.forward).
- lm_head: the LM head's log-probs in chunks with a hand-written backward. Twin: the model's
  own logits, then a log-softmax (openrft.algo.logprobs).
- compact: the compact decoder (fused weights with LoRA merged, one KV read per prompt for
  its G samples). Twin: the model's own forward in the decode loop (openrft.rollout.hf_engine).
- packed_weights: oneDNN/MKL packed weights for the compact decoder. Twin: `x @ W`.
- shadow: a merged low-precision copy to sample from. Twin: sampling from the policy itself.
- kv_cache: the in-place KV cache. Twin: transformers' DynamicCache.

`train.fast_paths = "auto"` uses each where its check passes and the twin elsewhere, with one
log line at job start saying which and why; `"off"` uses the twins only. Every touch of a
library's private internals goes through openrft.compat, whose version checks turn the fast
paths that need it off after an upgrade it was not written for.
"""
