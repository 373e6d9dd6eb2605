"""The `openrft` command line. `main` is the console script (pyproject: openrft.cli:main);
`python -m openrft.cli` runs it too. Each module adds its commands to the parser:

    train.py     openrft train | demo | config
    preflight.py openrft preflight
    grade.py     openrft grade | grader validate|new|serve
    data.py      openrft data validate|prepare|from-logs
    serve.py     openrft serve
    evaluate.py  openrft eval | baseline
    jobs.py      openrft server | jobs ...
    sft.py       openrft sft | export
    args.py      the arguments and exit code that train and sft share

Heavy imports (torch, transformers, uvicorn) happen inside the handlers: `openrft --help` and
`import openrft.cli` stay fast.
"""

from __future__ import annotations

import argparse
import sys

from openrft.cli import data, evaluate, grade, jobs, preflight, serve, sft, train
from openrft.errors import RFTError

# What to tell a user who pressed Ctrl-C, by command handler (only runs can be resumed).
RESUME_HINTS = {
    "cmd_train": "openrft train --resume RUN_DIR",
    "cmd_demo": "openrft train --resume RUN_DIR",
    "cmd_sft": "openrft sft --resume RUN_DIR",
}


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
        resume = RESUME_HINTS.get(getattr(args.handler, "__name__", ""), "")
        hint = f"; resume with `{resume}`" if resume else ""
        print(f"openrft: interrupted{hint}", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openrft", description="Self-hosted reinforcement fine-tuning (GRPO)."
    )
    commands = parser.add_subparsers(metavar="COMMAND")
    # The order of --help.
    for module in (train, preflight, grade, data, serve, evaluate, jobs, sft):
        module.add_commands(commands)
    return parser
