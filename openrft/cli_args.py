"""Command-line arguments that several `openrft` commands share."""

from __future__ import annotations

import argparse


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """CONFIG, --output, --resume, --max-steps, --set and --no-progress: a training run's
    arguments, the same for `openrft train` and `openrft sft`."""
    parser.add_argument("config", nargs="?", help="job config (TOML)")
    parser.add_argument("--output", help="run directory (default: <output_dir>/<name>-<time>)")
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint"
    )
    parser.add_argument("--max-steps", type=int, help="override train.max_steps")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config field",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or step lines")
