"""Grader dry runs: score completions (given, or sampled from a model) before any training,
and report what a user needs to trust the reward: its distribution, components, errors by
kind, latency, and how many prompts would give GRPO no signal.

    openrft grade --grader G --data DATA.jsonl --completions C.jsonl --output OUT.json
    openrft grade --grader G --data DATA.jsonl --model smollm2-135m-instruct --samples 4
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openrft.data import load_examples
from openrft.errors import DatasetError, RowError
from openrft.rewards import Grader, grade_safely
from openrft.types import Example, Grade, Sample


@dataclass(frozen=True)
class Graded:
    sample: Sample
    grade: Grade


def read_completions(path: str | Path, examples: dict[str, Example]) -> list[tuple[Example, str]]:
    """`{"id": ..., "completion": "..."}` per line (several lines may share an id)."""
    pairs, errors = [], []
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            errors.append(RowError(str(path), line_no, "", f"not valid JSON: {exc}"))
            continue
        if not isinstance(row, dict) or not isinstance(row.get("completion"), str):
            errors.append(RowError(str(path), line_no, "completion", "must be a string"))
        elif str(row.get("id")) not in examples:
            errors.append(
                RowError(str(path), line_no, "id", f"{row.get('id')!r} is not an id in the data")
            )
        else:
            pairs.append((examples[str(row["id"])], row["completion"]))
    if errors:
        raise DatasetError(errors)
    return pairs


def sample_completions(
    examples: Sequence[Example], model: str, samples: int, temperature: float, max_new_tokens: int
) -> list[tuple[Example, str, int]]:
    """K completions per prompt from a model openrft loads (greedy when temperature is 0)."""
    from openrft.data import encode_prompt
    from openrft.models.load import load_model
    from openrft.rollout.hf_engine import HFEngine
    from openrft.types import SamplingParams

    policy, tokenizer = load_model(model)
    engine = HFEngine(policy, tokenizer)
    prompts = [encode_prompt(e.messages, tokenizer) for e in examples]
    params = SamplingParams(n=samples, temperature=temperature, max_new_tokens=max_new_tokens)
    groups = engine.generate(prompts, params)
    return [
        (e, c.text, len(c.token_ids))
        for e, group in zip(examples, groups, strict=True)
        for c in group
    ]


def grade_pairs(
    grader: Grader,
    pairs: Sequence[tuple[Example, str, int]],
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> list[Graded]:
    counts: Counter[str] = Counter()
    samples = []
    for example, text, tokens in pairs:
        samples.append(
            Sample(
                id=f"{example.id}:{counts[example.id]}",
                messages=(*example.messages, {"role": "assistant", "content": text}),
                reference_answer=example.reference_answer,
                metadata=example.metadata,
                example_id=example.id,
                completion_tokens=tokens,
            )
        )
        counts[example.id] += 1
    graded: list[Graded] = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        graded += [Graded(s, g) for s, g in zip(batch, grade_safely(grader, batch), strict=True)]
        if on_batch:
            on_batch(len(batch))
    return graded


def summarize(graded: Sequence[Graded]) -> dict[str, Any]:
    scores = [g.grade.score for g in graded if g.grade.error is None]
    latencies = sorted(g.grade.latency_s for g in graded)
    components: dict[str, list[float]] = defaultdict(list)
    for g in graded:
        for name, value in g.grade.components.items():
            components[name].append(value)
    errors: dict[str, dict[str, Any]] = {}
    for g in graded:
        if g.grade.error is not None:
            entry = errors.setdefault(
                g.grade.error.kind,
                {"count": 0, "example": g.grade.error.message, "id": g.sample.id},
            )
            entry["count"] += 1
    by_prompt: dict[str, list[float]] = defaultdict(list)
    for g in graded:
        if g.grade.error is None:
            by_prompt[g.sample.example_id].append(g.grade.score)
    # Only prompts with two or more scored completions form a group that could carry signal.
    groups = [set(scores) for scores in by_prompt.values() if len(scores) > 1]
    return {
        "completions": len(graded),
        "prompts": len({g.sample.example_id for g in graded}),
        "mean": statistics.fmean(scores) if scores else None,
        "std": statistics.pstdev(scores) if len(scores) > 1 else 0.0,
        "min": min(scores, default=None),
        "max": max(scores, default=None),
        "components": {k: statistics.fmean(v) for k, v in sorted(components.items())},
        "error_rate": (len(graded) - len(scores)) / len(graded) if graded else 0.0,
        "errors": errors,
        "latency_p50_s": _percentile(latencies, 0.5),
        "latency_p95_s": _percentile(latencies, 0.95),
        "frac_prompts_same_score": (
            sum(len(s) == 1 for s in groups) / len(groups) if groups else None
        ),
    }


def write_output(path: str | Path, graded: Sequence[Graded], summary: dict[str, Any]) -> None:
    entries = [
        {
            "id": g.sample.example_id,
            "completion": g.sample.response,
            "score": g.grade.score,
            "metrics": dict(g.grade.components),
            "error": None
            if g.grade.error is None
            else {"kind": g.grade.error.kind, "message": g.grade.error.message},
        }
        for g in graded
    ]
    Path(path).write_text(
        json.dumps({"results": entries, "summary": summary}, indent=1, ensure_ascii=False)
    )


def format_report(graded: Sequence[Graded], summary: dict[str, Any], show: int = 3) -> str:
    lines = [f"{summary['completions']} completions of {summary['prompts']} prompts"]
    if summary["mean"] is not None:
        lines.append(
            f"reward: mean {summary['mean']:.3f}  std {summary['std']:.3f}  "
            f"min {summary['min']:.3f}  max {summary['max']:.3f}"
        )
        lines += [
            "",
            "distribution:",
            *histogram([g.grade.score for g in graded if g.grade.error is None]),
        ]
    if summary["components"]:
        lines += ["", "components (mean):"] + [
            f"  {k:<28} {v:.3f}" for k, v in summary["components"].items()
        ]
    lines += ["", f"errors: {summary['error_rate']:.1%} of completions"]
    for kind, entry in summary["errors"].items():
        lines.append(
            f"  {kind:<15} {entry['count']:>5}  e.g. {entry['id']}: {entry['example'][:120]}"
        )
    lines.append(
        f"latency per completion: p50 {summary['latency_p50_s'] * 1000:.1f} ms, "
        f"p95 {summary['latency_p95_s'] * 1000:.1f} ms"
    )
    same = summary["frac_prompts_same_score"]
    if same is not None:
        lines.append(f"prompts whose completions all scored the same (no GRPO signal): {same:.1%}")
    ok = sorted((g for g in graded if g.grade.error is None), key=lambda g: g.grade.score)
    for title, chosen in (("lowest", ok[:show]), ("highest", ok[::-1][:show])):
        lines += ["", f"{title}-scoring responses:"]
        lines += [
            f"  {g.grade.score:.3f}  {g.sample.id}: {_one_line(g.sample.response)}" for g in chosen
        ]
    return "\n".join(lines)


def histogram(scores: Sequence[float], bins: int = 10, width: int = 40) -> list[str]:
    if not scores:
        return []
    low, high = min(scores), max(scores)
    span = (high - low) or 1.0
    counts = Counter(min(bins - 1, int((s - low) / span * bins)) for s in scores)
    peak = max(counts.values())
    rows = []
    for b in range(bins if high > low else 1):
        start = low + span * b / bins
        bar = "#" * round(counts.get(b, 0) / peak * width)
        rows.append(f"  {start:>8.3f} | {bar} {counts.get(b, 0)}")
    return rows


def load_data(path: str | Path, limit: int | None) -> list[Example]:
    examples = load_examples(path)
    return examples[:limit] if limit else examples


def _percentile(values: Sequence[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def _one_line(text: str, limit: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
