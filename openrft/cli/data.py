"""`openrft data ...`: check, prepare and collect data sets (docs/data.md).

openrft data validate FILE [--model MODEL] [--chat-template model|plain]
openrft data prepare sst2|gsm8k --out DIR [--validation-size N] [--seed S]
openrft data from-logs LOG.jsonl ... --out FILE [--where K=V] [--filter JSON] [--use-responses]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_commands(commands: Any) -> None:
    """Add `data validate|prepare|from-logs` to the `openrft` sub-command parser."""
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
    from_logs = data.add_parser(
        "from-logs", help="an RFT data set from invocation logs, filtered on request metadata"
    )
    from_logs.add_argument("logs", nargs="+", help="JSONL invocation logs (openrft or Bedrock)")
    from_logs.add_argument("--out", required=True, help="the JSONL data set to write")
    for flag, text in (
        ("--where", "keep calls whose metadata has KEY=VALUE (every --where must hold)"),
        ("--where-not", "drop calls whose metadata has KEY=VALUE"),
        ("--any", "keep calls with at least one of these KEY=VALUE pairs"),
    ):
        from_logs.add_argument(flag, action="append", default=[], metavar="KEY=VALUE", help=text)
    from_logs.add_argument(
        "--filter", help="a Bedrock requestMetadataFilters object: JSON text or a .json file"
    )
    from_logs.add_argument(
        "--use-responses", action="store_true", help="the logged reply becomes reference_answer"
    )
    from_logs.set_defaults(handler=cmd_data_from_logs)


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


def cmd_data_from_logs(args: argparse.Namespace) -> int:
    import json

    from openrft.data.from_logs import FilterError, filter_from_flags, rows_from_logs, write_rows

    spec = filter_from_flags(args.where, args.where_not, args.any)
    if args.filter:
        text = Path(args.filter).read_text() if args.filter.endswith(".json") else args.filter
        try:
            given = json.loads(text)
        except ValueError as exc:
            raise FilterError(f"--filter is not JSON: {exc}") from exc
        spec = given if spec is None else {"andAll": [spec, given]}
    rows, report = rows_from_logs(args.logs, spec, args.use_responses)
    for line in report.lines():
        print(line)
    print(f"wrote {write_rows(rows, args.out)}")
    return 0
