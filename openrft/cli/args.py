"""What `openrft train` and `openrft sft` share: a run's arguments, its default directory and
the exit code of a run stopped on request."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

EXIT_STOPPED = 75  # stopped on request (SIGTERM) after a checkpoint; resume with --resume


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """--set SECTION.KEY=VALUE (repeatable): what every command that reads a config takes."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config field (repeatable)",
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """CONFIG, --output, --resume, --max-steps, --set and --no-progress: a training run's
    arguments, the same for `openrft train` and `openrft sft`."""
    parser.add_argument("config", nargs="?", help="job config (TOML)")
    parser.add_argument("--output", help="run directory (default: <output_dir>/<name>-<time>)")
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint"
    )
    parser.add_argument("--max-steps", type=int, help="override train.max_steps")
    add_set_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or step lines")


def default_run_dir(parent: str, name: str) -> Path:
    """`<parent>/<name>-<YYYYmmdd-HHMMSS>`: a fresh run directory when --output is not given."""
    return Path(parent) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
