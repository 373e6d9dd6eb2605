"""Evaluation reports: the console summary, the JSON and markdown report, and side-by-side
comparisons of models on the same prompts (`openrft eval`, `openrft eval --compare`).

    result = evaluate(engine, examples, prompt_ids, SamplingParams(n=4), grader)
    write_report(result, "eval.json", "eval.md")

`evaluate` and `EvalResult` are openrft.train.validation's: a training run's validation and an
evaluation measure the same thing with the same code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from openrft.rewards.dry_run import histogram
from openrft.train.validation import (
    CompletionResult,
    EvalResult,
    PromptResult,
    component_means,
    evaluate,
    json_safe,
    result_from_groups,
)

__all__ = [
    "CompletionResult",
    "EvalResult",
    "PromptResult",
    "compare",
    "component_means",
    "evaluate",
    "format_summary",
    "json_safe",
    "result_from_groups",
    "write_comparison",
    "write_report",
]


def format_summary(result: EvalResult) -> str:
    """The console summary: reward, components, pass@k, threshold, tokens, errors."""
    lines = [f"{result.prompts} prompts x {result.samples_per_prompt} samples"]
    for key in ("model", "adapter", "data", "grader"):
        if result.info.get(key):
            lines.append(f"{key}: {result.info[key]}")
    lines.append(f"mean reward: {_fmt(result.mean_reward)}")
    lines += [f"  {name:<28} {value:.4f}" for name, value in sorted(result.components.items())]
    lines.append(
        f"success threshold: score >= {result.success_threshold:g}   "
        f"success rate: {result.success_rate:.4f}"
    )
    lines += format_pass_at_k(result.pass_at_k)
    lines.append(f"tokens generated: {result.tokens_generated}")
    lines.append(f"grading errors: {result.errors} of {result.completions} completions")
    lines += [f"  {kind:<16} {count}" for kind, count in sorted(result.error_counts.items())]
    return "\n".join(lines)


def format_pass_at_k(pass_at_k: dict[int, float], per_line: int = 8) -> list[str]:
    """`pass@k: pass@1 0.25  pass@2 0.43 ...`, eight values a line."""
    cells = [f"pass@{k} {v:.4f}" for k, v in sorted(pass_at_k.items())]
    rows = [cells[i : i + per_line] for i in range(0, len(cells), per_line)]
    return [("pass@k: " if i == 0 else "        ") + "  ".join(r) for i, r in enumerate(rows)]


def write_report(
    result: EvalResult, out_json: str | Path, out_md: str | Path | None = None
) -> Path:
    """Write the full result as JSON and a markdown report; returns the markdown path."""
    out_json = Path(out_json)
    out_md = Path(out_md) if out_md is not None else out_json.with_suffix(".md")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result.to_dict(), indent=1, ensure_ascii=False))
    out_md.write_text(format_markdown(result))
    return out_md


def format_markdown(result: EvalResult, examples: int = 3) -> str:
    title = result.info.get("model") or "model"
    lines = [f"# openrft evaluation: {title}", "", "| | |", "|---|---|"]
    keys = ("model", "adapter", "data", "grader")
    rows: list[tuple[str, Any]] = [(k, result.info[k]) for k in keys if result.info.get(k)]
    rows += [
        ("prompts", result.prompts),
        ("samples per prompt", result.samples_per_prompt),
        ("temperature", result.sampling.get("temperature")),
        ("mean reward", _fmt(result.mean_reward)),
        ("success threshold", f"score >= {result.success_threshold:g}"),
        ("success rate", _fmt(result.success_rate)),
        ("tokens generated", result.tokens_generated),
        ("grading errors", f"{result.errors} of {result.completions}"),
    ]
    lines += [f"| {name} | {value} |" for name, value in rows]
    if result.components:
        lines += ["", "## Reward components (mean)", "", "| component | mean |", "|---|---|"]
        lines += [f"| {n} | {v:.4f} |" for n, v in sorted(result.components.items())]
    lines += ["", "## pass@k (unbiased estimator)", "", "| k | pass@k |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted(result.pass_at_k.items())]
    scores = [c.score for p in result.per_prompt for c in p.completions if c.score is not None]
    if scores:
        lines += ["", "## Score distribution", "", "```", *histogram(scores), "```"]
    lines += ["", "## Grading errors", ""] + _error_lines(result)
    lines += ["", "## Example completions", ""] + _example_lines(result, examples)
    return "\n".join(lines) + "\n"


def _error_lines(result: EvalResult) -> list[str]:
    if not result.error_counts:
        return ["none"]
    first: dict[str, tuple[str, str]] = {}
    for prompt in result.per_prompt:
        for k, c in enumerate(prompt.completions):
            if c.error is not None:
                first.setdefault(c.error["kind"], (f"{prompt.example_id}:{k}", c.error["message"]))
    lines = ["| kind | count | example |", "|---|---|---|"]
    for kind, count in sorted(result.error_counts.items()):
        where, message = first.get(kind, ("", ""))
        lines.append(f"| {kind} | {count} | {where}: {_cell(message, 160)} |")
    return lines


def _example_lines(result: EvalResult, show: int) -> list[str]:
    picks: dict[str, list[tuple[str, CompletionResult]]] = {"success": [], "fail": [], "error": []}
    for prompt in result.per_prompt:
        for k, c in enumerate(prompt.completions):
            kind = "error" if c.error else "success" if c.success else "fail"
            if len(picks[kind]) < show:
                picks[kind].append((f"{prompt.example_id}:{k}", c))
    lines = ["| completion | outcome | score | text |", "|---|---|---|---|"]
    for kind, chosen in picks.items():
        for where, c in chosen:
            lines.append(f"| {where} | {kind} | {_fmt(c.score)} | {_cell(c.text, 200)} |")
    return lines


def _cell(text: str, limit: int) -> str:
    flat = " ".join(str(text).split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@dataclass
class PromptDiff:
    """One prompt on which the compared models disagree."""

    example_id: str
    prompt: str  # the last prompt turn
    reference_answer: Any
    mean_scores: dict[str, float | None]  # per model; None when every grading failed
    spread: float  # max - min of the models' mean scores
    first_completion: dict[str, str]  # per model


@dataclass
class Comparison:
    """Models side by side on the same prompts."""

    labels: list[str]
    mean_reward: dict[str, float | None]
    success_rate: dict[str, float]
    pass_at_k: dict[str, dict[int, float]]
    error_counts: dict[str, dict[str, int]]
    differing: list[PromptDiff]  # largest spread first
    summaries: dict[str, dict[str, Any]]  # each model's EvalResult.summary()

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def compare(results: dict[str, EvalResult], top: int = 10) -> Comparison:
    """Mean reward and pass@k per model, and the `top` prompts whose mean scores differ most."""
    if len(results) < 2:
        raise ValueError("compare needs at least two results")
    labels = list(results)
    ids = [p.example_id for p in results[labels[0]].per_prompt]
    for label in labels[1:]:
        if [p.example_id for p in results[label].per_prompt] != ids:
            raise ValueError(f"{label} was evaluated on other prompts than {labels[0]}")
    diffs = []
    for index, example_id in enumerate(ids):
        prompts = {label: results[label].per_prompt[index] for label in labels}
        means = {label: p.mean_score for label, p in prompts.items()}
        known = [m for m in means.values() if m is not None]
        spread = max(known) - min(known) if known else 0.0
        if spread <= 0:
            continue
        first = prompts[labels[0]]
        diffs.append(
            PromptDiff(
                example_id=example_id,
                prompt=first.messages[-1]["content"],
                reference_answer=first.reference_answer,
                mean_scores=means,
                spread=spread,
                first_completion={label: p.completions[0].text for label, p in prompts.items()},
            )
        )
    diffs.sort(key=lambda d: -d.spread)
    return Comparison(
        labels=labels,
        mean_reward={label: r.mean_reward for label, r in results.items()},
        success_rate={label: r.success_rate for label, r in results.items()},
        pass_at_k={label: dict(r.pass_at_k) for label, r in results.items()},
        error_counts={label: dict(r.error_counts) for label, r in results.items()},
        differing=diffs[:top],
        summaries={label: r.summary() for label, r in results.items()},
    )


def write_comparison(comparison: Comparison, out_json: str | Path) -> dict[str, Path]:
    """The comparison as JSON, markdown (same name, .md) and a PNG plot (.png)."""
    out_json = Path(out_json)
    paths = {
        "json": out_json,
        "md": out_json.with_suffix(".md"),
        "png": out_json.with_suffix(".png"),
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(comparison.to_dict(), indent=1, ensure_ascii=False))
    plot_comparison(comparison, paths["png"])
    paths["md"].write_text(format_comparison(comparison, paths["png"].name))
    return paths


def plot_comparison(comparison: Comparison, out_png: Path) -> None:
    """Bars of mean reward per model, and pass@k curves per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bars, curves) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    labels = comparison.labels
    short = [f"M{i + 1}" for i in range(len(labels))]
    rewards = [comparison.mean_reward[label] for label in labels]
    drawn = bars.bar(
        short, [r or 0.0 for r in rewards], color=[f"C{i}" for i in range(len(labels))]
    )
    bars.bar_label(drawn, labels=[_fmt(r) if r is not None else "n/a" for r in rewards])
    bars.margins(y=0.15)
    bars.set_title("Mean reward")
    bars.set_ylabel("reward")
    for i, label in enumerate(labels):
        ks = sorted(comparison.pass_at_k[label])
        values = [comparison.pass_at_k[label][k] for k in ks]
        curves.plot(ks, values, marker="o", color=f"C{i}", label=f"{short[i]}: {label}")
    curves.xaxis.get_major_locator().set_params(integer=True)
    curves.set_title("pass@k")
    curves.set_xlabel("k")
    curves.set_ylim(0, 1.05)
    curves.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(out_png)
    plt.close(figure)


def format_comparison(comparison: Comparison, png_name: str) -> str:
    labels = comparison.labels
    lines = ["# openrft comparison", ""]
    lines += [f"- M{i + 1}: `{label}`" for i, label in enumerate(labels)]
    ks = sorted({k for values in comparison.pass_at_k.values() for k in values})
    head = ["model", "mean reward", "success rate", "errors"] + [f"pass@{k}" for k in ks]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, label in enumerate(labels):
        passk = [comparison.pass_at_k[label].get(k) for k in ks]
        cells = [
            f"M{i + 1}",
            _fmt(comparison.mean_reward[label]),
            _fmt(comparison.success_rate[label]),
            str(sum(comparison.error_counts[label].values())),
        ] + [_fmt(v) for v in passk]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![mean reward and pass@k]({png_name})", ""]
    lines += ["## Prompts where the models differ most (mean score per prompt)", ""]
    if not comparison.differing:
        return "\n".join(lines + ["The models score every prompt the same."]) + "\n"
    head = ["prompt", "reference", "spread"] + [f"M{i + 1}" for i in range(len(labels))]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for diff in comparison.differing:
        cells = [
            f"{diff.example_id}: {_cell(diff.prompt, 80)}",
            _cell(str(diff.reference_answer), 40),
            f"{diff.spread:.3f}",
        ] + [
            f"{_fmt(diff.mean_scores[label])} ({_cell(diff.first_completion[label], 40)})"
            for label in labels
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
