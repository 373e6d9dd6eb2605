"""Each advantage estimator and policy loss on the demo setting: the validation reward after
the same number of steps, same seed, and the wall time, as a markdown table.

The setting is `recipes/sst2-smollm2.toml` (SmolLM2-135M, LoRA r16, 8 SST-2 prompts x 8
completions, lr 2e-4, seed 0), validated greedily on its 128 held-out prompts at step 0 and
at the end. The estimators run on the recipe as it is; the losses run with two optimisation
passes per batch (`algo.update_epochs = 2`), because on a single on-policy pass every loss
gives the same gradient (the ratio is exactly 1) and the table would show nothing.

    .venv/bin/python bench/algorithms.py [--steps 40] [--only grpo rloo ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from openrft.config import load_config
from openrft.train.loop import train

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "sst2-smollm2.toml"
# (name, what differs from the recipe)
VARIANTS: list[tuple[str, list[str]]] = [
    ("grpo", ['algo.advantage="grpo"']),
    ("drgrpo", ['algo.advantage="drgrpo"']),
    ("rloo", ['algo.advantage="rloo"']),
    ("reinforce_pp", ['algo.advantage="reinforce_pp"']),
    ("reinforce_pp_baseline", ['algo.advantage="reinforce_pp_baseline"']),
    ("grpo_per_turn", ['algo.advantage="grpo_per_turn"']),
    ("ppo, 2 epochs", ['algo.policy_loss="ppo"', "algo.update_epochs=2"]),
    (
        "gspo, 2 epochs",
        [
            'algo.policy_loss="gspo"',
            "algo.update_epochs=2",
            "algo.clip_low=0.0003",
            "algo.clip_high=0.0004",
            'algo.loss_aggregation="sequence_mean"',
        ],
    ),
    (
        "cispo, 2 epochs",
        [
            'algo.policy_loss="cispo"',
            "algo.update_epochs=2",
            "algo.clip_low=1.0",
            "algo.clip_high=5.0",
        ],
    ),
    (
        "importance_sampling, 2 epochs",
        ['algo.policy_loss="importance_sampling"', "algo.update_epochs=2"],
    ),
]


def run(name: str, overrides: list[str], steps: int, root: Path) -> dict:
    config = load_config(
        RECIPE,
        [f"train.max_steps={steps}", "eval.interval=0", "eval.baseline_prompts=0", *overrides],
    )
    summary = train(config, root / name.replace(" ", "").replace(",", "-"), show_progress=False)
    return {"name": name, "overrides": overrides, **summary.__dict__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="RL steps per variant")
    parser.add_argument("--only", nargs="+", help="run only these variants (by name prefix)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    chosen = [v for v in VARIANTS if not args.only or any(v[0].startswith(o) for o in args.only)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in chosen:
            print(f"running {name} ({args.steps} steps)...", flush=True)
            results.append(run(name, overrides, args.steps, Path(tmp)))
            if args.out:
                args.out.write_text(json.dumps(results, indent=1))
    print(f"\n| variant | validation reward before -> after {args.steps} steps | wall time |")
    print("|---|---|---|")
    for r in results:
        change = f"{r['val_before']:.3f} -> {r['val_after']:.3f}"
        print(f"| {r['name']} | {change} | {r['wall_s']:.0f} s |")


if __name__ == "__main__":
    main()
