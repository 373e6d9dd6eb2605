"""Metric keys written to metrics.jsonl, one constant per key (the dashboard reads only these)."""

STEP = "step"
EPOCH = "epoch"
REWARD_MEAN = "reward/mean"
REWARD_STD = "reward/std"
REWARD_MIN = "reward/min"
REWARD_MAX = "reward/max"
REWARD_FRAC_ZERO_STD = "reward/frac_zero_std_groups"
REWARD_ERROR_RATE = "reward/error_rate"
COMPLETION_LENGTH_MEAN = "completion/length_mean"
COMPLETION_LENGTH_MAX = "completion/length_max"
COMPLETION_TRUNCATED = "completion/truncated_ratio"
ENTROPY = "policy/entropy"
KL = "policy/kl"
CLIP_RATIO = "policy/clip_ratio"
# Rollouts from another engine than the trainer (vLLM): how far apart the two are.
PROBE_GAP = "rollout/probe_logprob_gap"  # mean |vLLM - trainer| log-prob on the probe, nats
PROBE_SHIFT = "rollout/probe_logprob_shift"  # mean change of vLLM's probe log-probs this sync
SAMPLER_KL = "rollout/sampler_kl"  # mean log pi_sampler - log pi_trainer over trained tokens
SAMPLER_WEIGHT = "rollout/sampler_weight_mean"  # mean correction weight on the policy term
SAMPLER_CORRECTED = "rollout/sampler_corrected_ratio"  # share of tokens truncated or masked
LOSS = "loss/total"
GRAD_NORM = "optim/grad_norm"
LR = "optim/lr"
STEP_S = "time/step_s"
ROLLOUT_S = "time/rollout_s"
REWARD_S = "time/reward_s"
UPDATE_S = "time/update_s"
TOKENS_PER_S = "throughput/completion_tokens_per_s"
PEAK_RSS_GB = "memory/peak_rss_gb"
VAL_REWARD_MEAN = "val/reward/mean"
