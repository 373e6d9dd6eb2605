"""`openrft train`, `openrft demo` and `openrft config`: run an RL job, the CPU demo, and print a
resolved config.

openrft train CONFIG [--output RUN_DIR] [--max-steps N] [--set section.key=value ...]
openrft train --resume RUN_DIR
openrft demo [--output RUN_DIR] [--set ...]
openrft config [CONFIG] [--set ...]      print the resolved config with every field's comment
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from openrft.cli.args import EXIT_STOPPED, add_run_arguments, add_set_argument, default_run_dir
from openrft.errors import RFTError

RECIPES = Path(__file__).parent.parent / "recipes"
DEMO_RECIPE = RECIPES / "sst2-smollm2.toml"


def add_commands(commands: Any) -> None:
    """Add `train`, `demo` and `config` to the `openrft` sub-command parser."""
    train = commands.add_parser("train", help="run an RL job from a TOML config, or resume one")
    add_run_arguments(train)
    train.set_defaults(handler=cmd_train)

    demo = commands.add_parser(
        "demo", help="RFT SmolLM2-135M on SST-2 on this CPU and show the gain"
    )
    demo.add_argument("--output", help="run directory (default: runs/sst2-smollm2-<time>)")
    add_set_argument(demo)
    demo.set_defaults(handler=cmd_demo)

    config = commands.add_parser("config", help="print a resolved config with each field's comment")
    config.add_argument("config", nargs="?", help="job config (TOML); defaults when omitted")
    add_set_argument(config)
    config.set_defaults(handler=cmd_config)


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
    run_dir = Path(args.output) if args.output else default_run_dir(config.output_dir, config.name)
    follower = int(os.environ.get("RANK", "0")) > 0  # torchrun's other ranks write nothing
    if (run_dir / "metrics.jsonl").exists() and not follower:
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
    run_dir = Path(args.output) if args.output else default_run_dir("runs", "sst2-smollm2")
    print(
        f"openrft demo: {config.model.name} on {config.data.train_file}, "
        f"{config.train.max_steps} steps; run dir {run_dir}"
    )
    return _run(config, run_dir, resume=(run_dir / "metrics.jsonl").exists(), progress=True)


def cmd_config(args: argparse.Namespace) -> int:
    import json

    import tomli_w

    from openrft.config import config_to_dict, field_comments, load_config

    config = config_to_dict(load_config(args.config, args.set))
    comments = field_comments()

    def inline(value: object) -> str:
        """One line of TOML for a value; tables inline (an inline reward.grader table)."""
        if isinstance(value, dict):
            pairs = (f"{json.dumps(str(k))} = {inline(v)}" for k, v in value.items())
            return "{ " + ", ".join(pairs) + " }"
        if isinstance(value, list):
            return "[" + ", ".join(inline(v) for v in value) + "]"
        return tomli_w.dumps({"v": value})[4:].strip()

    for section, values in config.items():
        if not isinstance(values, dict):
            print(f"{section} = {inline(values)}  # {comments.get(section, '')}")
            continue
        print(f"\n[{section}]")
        for key, value in values.items():
            comment = comments.get(f"{section}.{key}", "")
            print(f"{key} = {inline(value)}" + (f"  # {comment}" if comment else ""))
    return 0


def _run(config, run_dir: Path, resume: bool, progress: bool) -> int:
    import signal
    import threading

    from openrft.train.loop import train
    from openrft.train.preflight_check import check_memory
    from openrft.train.status import write_status

    stop = threading.Event()
    # SIGTERM (the job server's stop, `kill PID`) finishes the step and checkpoints.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        check_memory(config)  # before the model loads: refuse a job that will not fit here
        summary = train(config, run_dir, resume=resume, show_progress=progress, stop=stop)
    except RFTError as exc:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_status(run_dir, "failed", message=f"{type(exc).__name__}: {exc}")
        except RFTError:  # a full disk: the job server names it from the exit and the disk
            pass
        raise
    before = "-" if summary.val_before is None else f"{summary.val_before:.3f}"
    after = "-" if summary.val_after is None else f"{summary.val_after:.3f}"
    gain = ""
    if summary.val_before is not None and summary.val_after is not None:
        gain = f" ({summary.val_after - summary.val_before:+.3f})"
    if summary.status == "follower":  # a data-parallel rank other than 0: rank 0 reports
        return 0
    if summary.status == "stopped":
        print(
            f"\nstopped after step {summary.steps}; resume with: openrft train --resume {run_dir}"
        )
        return EXIT_STOPPED
    print(f"\nvalidation reward: before {before} -> after {after}{gain}")
    print(f"steps: {summary.steps}   wall time: {summary.wall_s:.0f} s")
    print(f"run: {summary.run_dir}\nreport: {summary.report}")
    return 0
