"""The Step-0 baseline's console report. The baseline itself (sample G responses for N
prompts and advise whether GRPO can learn here) is openrft.train.validation's, which a
training run calls at job start and `openrft baseline` calls on its own."""

from __future__ import annotations

from openrft.evaluation.evaluate import format_pass_at_k
from openrft.train.validation import (
    BaselineResult,
    advice_sentence,
    advise,
    baseline,
)

__all__ = ["BaselineResult", "advice_sentence", "advise", "baseline", "format_baseline"]


def format_baseline(result: BaselineResult) -> str:
    """The console report: the numbers, then the advice."""
    lines = [
        f"baseline: {result.prompts} prompts x {result.samples_per_prompt} samples",
        f"mean reward: {result.mean_reward:.4f}",
        f"success threshold: score >= {result.success_threshold:g}   "
        f"success rate: {result.success_rate:.4f}",
        f"prompts where all samples fail:    {result.all_fail_share:7.1%}",
        f"prompts where all samples succeed: {result.all_succeed_share:7.1%}",
        f"prompts where samples differ:      {result.mixed_share:7.1%}  (GRPO signal)",
        f"prompts with unequal scores:       {result.signal_share:7.1%}",
        *format_pass_at_k(result.pass_at_k),
        f"grading errors: {sum(result.error_counts.values())}"
        + "".join(f"  {k}: {n}" for k, n in sorted(result.error_counts.items())),
        "",
        f"advice: {result.advice}",
        result.message,
    ]
    return "\n".join(lines)
