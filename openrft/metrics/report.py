"""A run's report: PNG plots of the metrics that matter and `report.md` that embeds them,
for RL runs (`RL_PLOTS`) and SFT runs (`SFT_PLOTS`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from openrft.metrics.writer import read_jsonl  # noqa: E402

# (file name, title, metrics drawn, metric drawn as a +- band around the first)
Plot = tuple[str, str, list[str], str | None]
RL_PLOTS: tuple[Plot, ...] = (
    ("reward.png", "Train reward", ["reward/mean"], "reward/std"),
    ("val_reward.png", "Validation reward", ["val/reward/mean"], None),
    (
        "completion_length.png",
        "Completion length (tokens)",
        ["completion/length_mean", "completion/length_max"],
        None,
    ),
    ("entropy.png", "Policy entropy (nats/token)", ["policy/entropy"], None),
    # Multi-turn jobs only (a plot with no points is left out):
    ("tools.png", "Tool use per episode", ["episode/tool_calls_mean", "episode/tool_error_rate"],
     None),
    ("episodes.png", "Episodes: turns, and the share that ended each way",
     ["episode/turns_mean", "episode/finish/stop", "episode/finish/max_turns",
      "episode/finish/length", "episode/finish/error"], None),
)  # fmt: skip
SFT_PLOTS: tuple[Plot, ...] = (
    ("loss.png", "Training loss (assistant tokens, nats/token)", ["loss/total"], None),
    ("val_loss.png", "Validation loss (assistant tokens, nats/token)", ["val/loss"], None),
)


def write_report(
    run_dir: Path,
    summary: dict[str, Any],
    plots: tuple[Plot, ...] = RL_PLOTS,
    label: str = "validation reward",
    checkpoints: list[dict[str, Any]] | None = None,
    notes: dict[str, Any] | None = None,
) -> Path:
    """report.md: the summary table, the plots, the checkpoints kept with their metric, and
    the last step's record."""
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    images = []
    for filename, title, keys, band in plots:
        if _plot(metrics, keys, band, title, run_dir / filename):
            images.append((title, filename))
    lines = [
        f"# openrft run report: {run_dir.name}",
        "",
        "| | |",
        "|---|---|",
        f"| {label} before | {_fmt(summary.get('val_before'))} |",
        f"| {label} after | {_fmt(summary.get('val_after'))} |",
        f"| steps | {summary.get('steps')} |",
        f"| wall time | {_fmt(summary.get('wall_s'))} s |",
    ]
    if summary.get("stop_reason"):
        lines.append(f"| stopped early | {summary['stop_reason']} |")
    lines += [f"| {key.replace('_', ' ')} | {value} |" for key, value in (notes or {}).items()]
    lines.append("")
    for title, filename in images:
        lines += [f"## {title}", "", f"![{title}]({filename})", ""]
    if checkpoints:
        lines += ["## Checkpoints kept", "", "| step | metric | best |", "|---|---|---|"]
        lines += [
            f"| {c['step']} | {_fmt(c['metric'])} | {'yes' if c['best'] else ''} |"
            for c in checkpoints
        ]
        lines.append("")
    first_key = plots[0][2][0] if plots else ""
    last = next((m for m in reversed(metrics) if first_key in m), None)
    if last:
        lines += ["## Last step", "", "```json", json.dumps(last, indent=1), "```", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _plot(metrics: list[dict], keys: list[str], band: str | None, title: str, out: Path) -> bool:
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    drawn = False
    for key in keys:
        points = [(m["step"], m[key]) for m in metrics if m.get(key) is not None]
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        axis.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=key)
        drawn = True
        if band:
            spread = [
                (m["step"], m[key], m[band])
                for m in metrics
                if m.get(key) is not None and m.get(band) is not None
            ]
            if spread:
                s, v, d = zip(*spread, strict=True)
                axis.fill_between(
                    s,
                    [a - b for a, b in zip(v, d, strict=True)],
                    [a + b for a, b in zip(v, d, strict=True)],
                    alpha=0.2,
                    label=f"± {band}",
                )
    if drawn:
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(out)
    plt.close(figure)
    return drawn


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
