"""The `openrft` command line: train, resume, demo, and data tools.

openrft demo [--output RUN_DIR]
openrft train CONFIG [--output RUN_DIR] [--max-steps N] [--set section.key=value ...]
openrft train --resume RUN_DIR
openrft data validate FILE [--model MODEL]
openrft data prepare sst2|gsm8k --out DIR
openrft config [CONFIG] [--set ...]      print the resolved config with every field's comment
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from openrft.errors import RFTError

RECIPES = Path(__file__).parent / "recipes"
DEMO_RECIPE = RECIPES / "sst2-smollm2.toml"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except RFTError as exc:
        print(f"openrft: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("openrft: interrupted; resume with `openrft train --resume RUN_DIR`", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openrft", description="Self-hosted reinforcement fine-tuning (GRPO)."
    )
    commands = parser.add_subparsers(metavar="COMMAND")

    train = commands.add_parser("train", help="run an RL job from a TOML config, or resume one")
    train.add_argument("config", nargs="?", help="job config (TOML)")
    train.add_argument("--output", help="run directory (default: <output_dir>/<name>-<time>)")
    train.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint"
    )
    train.add_argument("--max-steps", type=int, help="override train.max_steps")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config field",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar or step lines")
    train.set_defaults(handler=cmd_train)

    demo = commands.add_parser(
        "demo", help="RFT SmolLM2-135M on SST-2 on this CPU and show the gain"
    )
    demo.add_argument("--output", help="run directory (default: runs/sst2-smollm2-<time>)")
    demo.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config field",
    )
    demo.set_defaults(handler=cmd_demo)

    config = commands.add_parser("config", help="print a resolved config with each field's comment")
    config.add_argument("config", nargs="?", help="job config (TOML); defaults when omitted")
    config.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    config.set_defaults(handler=cmd_config)

    data_parser = commands.add_parser("data", help="validate or prepare data sets")
    data_parser.set_defaults(handler=lambda _: data_parser.print_help() or 2)
    data = data_parser.add_subparsers(metavar="ACTION")
    validate = data.add_parser("validate", help="check a JSONL data set and summarise it")
    validate.add_argument("file")
    validate.add_argument(
        "--model", help="model (alias, directory or .gguf) for prompt token lengths"
    )
    validate.add_argument("--chat-template", default="model", choices=["model", "plain"])
    validate.set_defaults(handler=cmd_data_validate)
    prepare = data.add_parser(
        "prepare", help="write train/validation JSONL for a built-in data set"
    )
    prepare.add_argument("name", choices=["sst2", "gsm8k"])
    prepare.add_argument("--out", required=True, help="output directory")
    prepare.add_argument("--validation-size", type=int, help="rows held out for validation")
    prepare.add_argument("--seed", type=int, default=0)
    prepare.set_defaults(handler=cmd_data_prepare)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from openrft.config import load_config

    overrides = list(args.set) + (
        [f"train.max_steps={args.max_steps}"] if args.max_steps is not None else []
    )
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.toml").exists():
            print(
                f"openrft: error: {run_dir} has no config.toml; is it a run directory?",
                file=sys.stderr,
            )
            return 1
        config = load_config(run_dir / "config.toml", overrides)
        return _run(config, run_dir, resume=True, progress=not args.no_progress)
    if not args.config:
        print("openrft: error: give a CONFIG file, or --resume RUN_DIR", file=sys.stderr)
        return 2
    config = load_config(args.config, overrides)
    run_dir = Path(args.output) if args.output else _default_run_dir(config.output_dir, config.name)
    if (run_dir / "metrics.jsonl").exists():
        print(
            f"openrft: error: {run_dir} already holds a run; "
            f"use --resume {run_dir} or another --output",
            file=sys.stderr,
        )
        return 1
    return _run(config, run_dir, resume=False, progress=not args.no_progress)


def cmd_demo(args: argparse.Namespace) -> int:
    from openrft.config import load_config

    config = load_config(DEMO_RECIPE, args.set)
    run_dir = Path(args.output) if args.output else _default_run_dir("runs", "sst2-smollm2")
    print(
        f"openrft demo: {config.model.name} on {config.data.train_file}, "
        f"{config.train.max_steps} steps; run dir {run_dir}"
    )
    return _run(config, run_dir, resume=(run_dir / "metrics.jsonl").exists(), progress=True)


def cmd_config(args: argparse.Namespace) -> int:
    import tomli_w

    from openrft.config import config_to_dict, field_comments, load_config

    config = config_to_dict(load_config(args.config, args.set))
    comments = field_comments()
    for section, values in config.items():
        if not isinstance(values, dict):
            comment = comments.get(section, "")
            print(f"{section} = {tomli_w.dumps({'v': values})[4:].strip()}  # {comment}")
            continue
        print(f"\n[{section}]")
        for key, value in values.items():
            rendered = tomli_w.dumps({"v": value})[4:].strip()
            comment = comments.get(f"{section}.{key}", "")
            print(f"{key} = {rendered}" + (f"  # {comment}" if comment else ""))
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from openrft.data import format_summary, summarize_file

    tokenizer = None
    if args.model:
        from openrft.models.load import load_model

        _, tokenizer = load_model(args.model)
    summary = summarize_file(args.file, tokenizer, args.chat_template)
    print(format_summary(summary))
    return 1 if summary.errors else 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from openrft.data import prepare_dataset

    train, validation = prepare_dataset(args.name, args.out, args.validation_size, args.seed)
    print(f"wrote {train} and {validation}")
    return 0


def _run(config, run_dir: Path, resume: bool, progress: bool) -> int:
    from openrft.train.loop import train

    summary = train(config, run_dir, resume=resume, show_progress=progress)
    before = "-" if summary.val_before is None else f"{summary.val_before:.3f}"
    after = "-" if summary.val_after is None else f"{summary.val_after:.3f}"
    gain = ""
    if summary.val_before is not None and summary.val_after is not None:
        gain = f" ({summary.val_after - summary.val_before:+.3f})"
    print(f"\nvalidation reward: before {before} -> after {after}{gain}")
    print(f"steps: {summary.steps}   wall time: {summary.wall_s:.0f} s")
    print(f"run: {summary.run_dir}\nreport: {summary.report}")
    return 0


def _default_run_dir(parent: str, name: str) -> Path:
    return Path(parent) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


if __name__ == "__main__":
    sys.exit(main())
