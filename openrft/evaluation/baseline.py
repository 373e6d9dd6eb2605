"""The Step-0 baseline: before any RFT, sample G responses for N prompts and ask whether GRPO
can learn anything here.

GRPO learns only from prompts whose G responses score differently: when all fail or all
succeed, every advantage is 0. The advice follows the managed services' guidance:

- mean reward > `rft_unnecessary_above` (0.95): "rft_unnecessary", the model already does it;
- no success at all, or the share of prompts where every sample fails >=
  `sft_first_all_fail_share` (0.95): "sft_first", teach the format/task with supervised
  fine-tuning, then RFT;
- otherwise "go", with the share of prompts that carry a signal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from openrft.errors import GraderError
from openrft.evaluation.evaluate import EvalResult, evaluate, format_pass_at_k, json_safe
from openrft.rewards import Grader
from openrft.rollout.engine import RolloutEngine
from openrft.types import Example, SamplingParams

Advice = Literal["rft_unnecessary", "sft_first", "go"]
RFT_UNNECESSARY_ABOVE = 0.95
SFT_FIRST_ALL_FAIL_SHARE = 0.95
RARE_SUCCESS = 0.05  # below this success rate, "go" warns that learning will be slow
LOW_SIGNAL_SHARE = 0.1  # below this share of mixed prompts, "go" comes with a warning


@dataclass
class BaselineResult:
    prompts: int
    samples_per_prompt: int
    mean_reward: float
    success_threshold: float  # a sample succeeds when its score >= this
    success_rate: float  # successes / samples (grading errors count as failures)
    all_fail_share: float  # prompts whose samples all fail
    all_succeed_share: float  # prompts whose samples all succeed
    mixed_share: float  # prompts with successes and failures: these give GRPO a signal
    signal_share: float  # prompts whose graded scores are not all equal (partial credit too)
    pass_at_k: dict[int, float]
    error_counts: dict[str, int]
    advice: Advice
    message: str  # the advice as a sentence
    thresholds: dict[str, float]
    evaluation: EvalResult | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the evaluation's summary (not its per-prompt results)."""
        data = {k: v for k, v in asdict(self).items() if k != "evaluation"}
        if self.evaluation is not None:
            data["evaluation"] = self.evaluation.summary()
        return json_safe(data)


def baseline(
    engine: RolloutEngine,
    examples: Sequence[Example],
    prompt_ids: Sequence[Sequence[int]],
    params: SamplingParams,
    grader: Grader,
    success_threshold: float = 1.0,
    rft_unnecessary_above: float = RFT_UNNECESSARY_ABOVE,
    sft_first_all_fail_share: float = SFT_FIRST_ALL_FAIL_SHARE,
) -> BaselineResult:
    """Sample `params.n` responses for each prompt, grade them and advise."""
    result = evaluate(engine, examples, prompt_ids, params, grader, success_threshold)
    return advise(result, rft_unnecessary_above, sft_first_all_fail_share)


def advise(
    result: EvalResult,
    rft_unnecessary_above: float = RFT_UNNECESSARY_ABOVE,
    sft_first_all_fail_share: float = SFT_FIRST_ALL_FAIL_SHARE,
) -> BaselineResult:
    """The baseline numbers and advice for an evaluation with several samples per prompt."""
    if result.mean_reward is None:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(result.error_counts.items()))
        raise GraderError(
            f"every one of the {result.completions} samples failed grading ({kinds}); "
            "fix the grader (try `openrft grade`) before reading a baseline"
        )
    n = result.samples_per_prompt
    prompts = result.prompts
    all_fail = sum(p.successes == 0 for p in result.per_prompt) / prompts
    all_succeed = sum(p.successes == n for p in result.per_prompt) / prompts
    signal = 1.0 - result.metrics["reward/frac_zero_std_groups"]
    if result.mean_reward > rft_unnecessary_above:
        advice: Advice = "rft_unnecessary"
    elif result.success_rate == 0 or all_fail >= sft_first_all_fail_share:
        advice = "sft_first"
    else:
        advice = "go"
    base = BaselineResult(
        prompts=prompts,
        samples_per_prompt=n,
        mean_reward=result.mean_reward,
        success_threshold=result.success_threshold,
        success_rate=result.success_rate,
        all_fail_share=all_fail,
        all_succeed_share=all_succeed,
        mixed_share=1.0 - all_fail - all_succeed,
        signal_share=signal,
        pass_at_k=dict(result.pass_at_k),
        error_counts=dict(result.error_counts),
        advice=advice,
        message="",
        thresholds={
            "rft_unnecessary_above": rft_unnecessary_above,
            "sft_first_all_fail_share": sft_first_all_fail_share,
        },
        evaluation=result,
    )
    base.message = advice_sentence(base)
    return base


def advice_sentence(result: BaselineResult) -> str:
    """The advice in words, with the numbers behind it."""
    mixed = round(result.mixed_share * result.prompts)
    if result.advice == "rft_unnecessary":
        text = (
            f"RFT unnecessary: the mean reward is already {result.mean_reward:.3f} "
            f"(> {result.thresholds['rft_unnecessary_above']:g}); the model does this task."
        )
    elif result.advice == "sft_first":
        text = (
            f"SFT first: {result.all_fail_share:.0%} of prompts have no successful sample "
            f"(success rate {result.success_rate:.3f}); GRPO has nothing to reinforce. Teach "
            "the task and answer format with supervised fine-tuning, then run RFT."
        )
        if result.signal_share > 0:
            text += (
                f" {result.signal_share:.0%} of prompts do score unevenly: if partial credit "
                f"counts, lower the success threshold ({result.success_threshold:g})."
            )
    else:
        text = (
            f"Go: {result.mixed_share:.0%} of prompts ({mixed} of {result.prompts}) have both "
            f"successful and failed samples and give GRPO a learning signal; mean reward "
            f"{result.mean_reward:.3f}."
        )
        if result.success_rate < RARE_SUCCESS:
            text += (
                f" Successes are rare (under {RARE_SUCCESS:.0%} of samples): learning will be "
                "slow; consider SFT first, or a reward that gives partial credit."
            )
        if result.mixed_share < LOW_SIGNAL_SHARE:
            text += (
                " Few prompts give a signal: raise the samples per prompt or the temperature, "
                "or drop prompts that are always solved or always failed."
            )
    errors = sum(result.error_counts.values())
    if errors:
        total = result.prompts * result.samples_per_prompt
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(result.error_counts.items()))
        text += f" Warning: {errors} of {total} samples failed grading ({kinds}); fix the grader."
    return text


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
