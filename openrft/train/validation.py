"""Validation: sample K completions per prompt, grade them, and summarise as the training
loop's metrics (mean reward, per-component means, pass@k for k = 1..K, tokens, grading
errors), per prompt and overall; and the Step-0 baseline's advice on whether GRPO can learn.

    result = evaluate(engine, examples, prompt_ids, SamplingParams(n=4), grader)

A training run's validation and `openrft eval` both call `evaluate`, so they measure the same
thing; openrft.evaluation formats, compares and reports these results. A completion succeeds
when its score is at least `success_threshold`; a completion whose grading failed is a
failure for pass@k and is counted under its error kind (never turned into a silent 0).

The baseline (`baseline`, `advise`): GRPO learns only from prompts whose G responses score
differently; when all fail or all succeed, every advantage is 0. The advice follows the
managed services' guidance:
- mean reward > `rft_unnecessary_above` (0.95): "rft_unnecessary", the model already does it;
- no success at all, or the share of prompts where every sample fails >=
  `sft_first_all_fail_share` (0.95): "sft_first", teach the format/task with supervised
  fine-tuning, then RFT;
- otherwise "go", with the share of prompts that carry a signal.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from openrft.algo.passk import mean_pass_at_k
from openrft.config import JobConfig
from openrft.errors import GraderError, NoLearningSignal
from openrft.rewards import Grader
from openrft.rollout.engine import RolloutEngine
from openrft.train.data_setup import JobData
from openrft.train.engines import sampling_params
from openrft.train.episodes import EpisodeJob
from openrft.train.pipeline import PIPELINED, GradingPlan, grading_plan
from openrft.train.rollouts import (
    collect_groups,
    completion_metrics,
    episode_record,
    reward_metrics,
)
from openrft.types import Example, RolloutGroup, SamplingParams


@dataclass
class CompletionResult:
    text: str
    tokens: int  # generated tokens
    finish_reason: str  # "stop" or "length" (hit max_new_tokens)
    score: float | None  # None when grading failed
    components: dict[str, float]
    error: dict[str, str] | None  # {"kind", "message"} when grading failed
    success: bool  # graded and score >= success_threshold
    episode: dict[str, Any] | None = None  # a multi-turn episode's turns (as rollouts.jsonl)


@dataclass
class PromptResult:
    example_id: str
    messages: list[dict[str, str]]
    reference_answer: Any
    completions: list[CompletionResult]
    successes: int
    mean_score: float | None  # over the completions that were graded; None when none was


@dataclass
class EvalResult:
    """An evaluation's numbers; `metrics` holds the training loop's metric keys."""

    mean_reward: float | None  # over graded completions; None when every grading failed
    components: dict[str, float]  # per-component means
    pass_at_k: dict[int, float]  # unbiased pass@k for k = 1..samples_per_prompt
    success_threshold: float
    success_rate: float  # successes / completions (errors count as failures)
    prompts: int
    samples_per_prompt: int
    completions: int
    tokens_generated: int
    error_counts: dict[str, int]  # by GradeErrorKind
    metrics: dict[str, float]  # reward/*, completion/*, pass@k/<k>, as logged by training
    per_prompt: list[PromptResult]
    sampling: dict[str, Any]  # the SamplingParams used
    info: dict[str, Any] = field(default_factory=dict)  # model, adapter, data, grader

    @property
    def errors(self) -> int:
        return sum(self.error_counts.values())

    def log_metrics(self, prefix: str = "val") -> dict[str, float]:
        """Metrics under a prefix, e.g. `val/reward/mean`, `val/completion/length_mean`."""
        return {f"{prefix}/{key}": value for key, value in self.metrics.items()}

    def summary(self) -> dict[str, Any]:
        """Everything except the per-prompt results (JSON-ready)."""
        data = self.to_dict()
        data.pop("per_prompt")
        return data

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None, pass@k keys become strings."""
        return json_safe(asdict(self))


def evaluate(
    engine: RolloutEngine,
    examples: Sequence[Example],
    prompt_ids: Sequence[Sequence[int]],
    params: SamplingParams,
    grader: Grader,
    success_threshold: float = 1.0,
    episodes: EpisodeJob | None = None,
    grading: GradingPlan = PIPELINED,
) -> EvalResult:
    """Sample `params.n` completions (episodes, with `episodes`) per prompt, grade them, and
    summarise: pass@k counts completions or whole episodes alike."""
    if not examples:
        raise ValueError("evaluate needs at least one prompt")
    groups, _ = collect_groups(engine, examples, prompt_ids, params, grader, episodes, grading)
    return result_from_groups(groups, params, success_threshold)


def result_from_groups(
    groups: list[RolloutGroup], params: SamplingParams, success_threshold: float = 1.0
) -> EvalResult:
    """The EvalResult of graded rollout groups (each with `params.n` completions)."""
    per_prompt = [_prompt_result(group, success_threshold) for group in groups]
    successes = [p.successes for p in per_prompt]
    pass_k = mean_pass_at_k(successes, params.n, list(range(1, params.n + 1)))
    rewards = reward_metrics(groups)
    metrics = {**rewards, **completion_metrics(groups)}
    metrics.update({f"pass@k/{k}": v for k, v in pass_k.items()})
    completions = sum(len(p.completions) for p in per_prompt)
    return EvalResult(
        mean_reward=_finite_or_none(rewards["reward/mean"]),
        components=component_means(rewards),
        pass_at_k=pass_k,
        success_threshold=success_threshold,
        success_rate=sum(successes) / completions,
        prompts=len(per_prompt),
        samples_per_prompt=params.n,
        completions=completions,
        tokens_generated=sum(c.tokens for p in per_prompt for c in p.completions),
        error_counts={
            key.rpartition("/")[2]: int(value)
            for key, value in rewards.items()
            if key.startswith("reward/errors/")
        },
        metrics=metrics,
        per_prompt=per_prompt,
        sampling=asdict(params),
    )


def component_means(rewards: dict[str, float], prefix: str = "reward") -> dict[str, float]:
    """`{name: mean}` from reward_metrics' `<prefix>/<name>/mean` keys."""
    head, tail = f"{prefix}/", "/mean"
    return {
        key[len(head) : -len(tail)]: value
        for key, value in rewards.items()
        if key.startswith(head) and key.endswith(tail) and key != f"{prefix}/mean"
    }


def _prompt_result(group: RolloutGroup, threshold: float) -> PromptResult:
    completions = []
    for completion, grade in zip(group.completions, group.grades, strict=True):
        ok = grade.error is None and grade.score is not None
        completions.append(
            CompletionResult(
                text=completion.text,
                tokens=len(completion.token_ids),
                finish_reason=completion.finish_reason,
                score=grade.score if ok else None,
                components=dict(grade.components),
                error=None
                if grade.error is None
                else {"kind": grade.error.kind, "message": grade.error.message},
                success=ok and grade.score >= threshold,
                episode=None if completion.episode is None else episode_record(completion.episode),
            )
        )
    scores = [c.score for c in completions if c.score is not None]
    return PromptResult(
        example_id=group.example.id,
        messages=[dict(m) for m in group.example.messages],
        reference_answer=group.example.reference_answer,
        completions=completions,
        successes=sum(c.success for c in completions),
        mean_score=sum(scores) / len(scores) if scores else None,
    )


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """NaN and inf become None: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


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
    episodes: EpisodeJob | None = None,
) -> BaselineResult:
    """Sample `params.n` responses for each prompt, grade them and advise."""
    result = evaluate(engine, examples, prompt_ids, params, grader, success_threshold, episodes)
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


def validate(
    engine: RolloutEngine,
    data: JobData,
    config: JobConfig,
    grader: Grader,
    step: int,
    episodes: EpisodeJob | None = None,
) -> dict[str, float]:
    """Validation on the held-out prompts with the same code as `openrft eval` (greedy unless
    eval.temperature > 0): val/reward/*, val/completion/*, val/pass@k/*."""
    params = SamplingParams(
        n=config.eval.samples_per_prompt,
        temperature=config.eval.temperature,
        top_p=config.rollout.top_p if config.eval.temperature > 0 else 1.0,
        top_k=config.rollout.top_k if config.eval.temperature > 0 else 0,
        max_new_tokens=config.eval.max_new_tokens or config.rollout.max_new_tokens,
        stop=config.rollout.stop,
        seed=config.train.seed + 7_919 * (step + 1),
    )
    prompt_ids = [data.prompt_ids[e.id] for e in data.validation]
    result = evaluate(
        engine, data.validation, prompt_ids, params, grader, config.eval.success_threshold,
        episodes, grading_plan(config),
    )  # fmt: skip
    return result.log_metrics("val")


def step_zero_baseline(
    engine: RolloutEngine,
    data: JobData,
    config: JobConfig,
    grader: Grader,
    run_dir: Path,
    episodes: EpisodeJob | None = None,
) -> dict[str, float]:
    """The baseline check on the first `eval.baseline_prompts` training prompts, sampled as
    training samples them; writes RUN_DIR/baseline.json and returns its baseline/* metrics.
    With `eval.require_signal`, no prompt with differing scores stops the job here."""
    examples = data.train[: config.eval.baseline_prompts]
    prompt_ids = [data.prompt_ids[e.id] for e in examples]
    params = sampling_params(config, seed=config.train.seed * 1_000_003)
    result = baseline(
        engine, examples, prompt_ids, params, grader, config.eval.success_threshold,
        episodes=episodes,
    )  # fmt: skip
    (run_dir / "baseline.json").write_text(json.dumps(result.to_dict(), indent=2))
    print(f"Step-0 baseline: {result.message}", file=sys.stderr, flush=True)
    if config.eval.require_signal and result.signal_share == 0:
        raise NoLearningSignal(
            f"eval.require_signal: the Step-0 baseline sampled {result.prompts} prompts x "
            f"{result.samples_per_prompt} and no prompt's samples scored differently, so GRPO "
            f"has nothing to learn from ({result.message}); see {run_dir / 'baseline.json'}"
        )
    return {
        "baseline/mean_reward": result.mean_reward,
        "baseline/signal_share": result.signal_share,
        "baseline/all_fail_share": result.all_fail_share,
        "baseline/all_succeed_share": result.all_succeed_share,
    }
