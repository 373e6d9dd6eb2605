"""`openrft grade` (dry-run a grader on completions before training) and `openrft grader ...`
(validate, scaffold or host graders); see docs/graders.md and docs/lambda.md.

openrft grade --grader G --data FILE (--completions FILE | --model M) [--samples K] ...
openrft grader validate GRADER
openrft grader new math|format|generic|judge|lambda DIRECTORY
openrft grader serve HANDLER.py [--host H] [--port P]
"""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(commands: Any) -> None:
    """Add `grade` and `grader` to the `openrft` sub-command parser."""
    grade = commands.add_parser("grade", help="dry-run a grader on completions before training")
    grade.add_argument("--grader", required=True, help="built-in name, file.py:fn, or grader file")
    grade.add_argument("--data", required=True, help="JSONL data set (prompts and references)")
    source = grade.add_mutually_exclusive_group(required=True)
    source.add_argument("--completions", help='JSONL of {"id": ..., "completion": "..."}')
    source.add_argument("--model", help="sample completions from this model instead")
    grade.add_argument("--samples", type=int, default=4, help="completions per prompt with --model")
    grade.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    grade.add_argument("--max-new-tokens", type=int, default=128, help="generation cap")
    grade.add_argument("--limit", type=int, help="use only the first N prompts")
    grade.add_argument("--timeout", type=float, default=60.0, help="per-sample timeout (s)")
    grade.add_argument("--output", help="write per-completion results and the summary as JSON")
    grade.set_defaults(handler=cmd_grade)

    grader_parser = commands.add_parser("grader", help="validate, scaffold or serve graders")
    grader_parser.set_defaults(handler=lambda _: grader_parser.print_help() or 2)
    grader = grader_parser.add_subparsers(metavar="ACTION")
    check = grader.add_parser("validate", help="check a grader without running it")
    check.add_argument("grader", help="grader file (TOML/JSON), built-in name or file.py:fn")
    check.set_defaults(handler=cmd_grader_validate)
    new = grader.add_parser("new", help="write a working grader with a test to start from")
    new.add_argument("kind", choices=["math", "format", "generic", "judge", "lambda"])
    new.add_argument("directory")
    new.set_defaults(handler=cmd_grader_new)
    host = grader.add_parser("serve", help="host a Bedrock Lambda handler as a reward endpoint")
    host.add_argument(
        "file", help="handler file: lambda_handler(event, context), grade() or reward()"
    )
    host.add_argument("--host", default="127.0.0.1")
    host.add_argument("--port", type=int, default=8080)
    host.set_defaults(handler=cmd_grader_serve)


def cmd_grade(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from openrft.rewards import build_grader, dry_run

    grader = build_grader(args.grader, args.timeout)
    examples = dry_run.load_data(args.data, args.limit)
    if args.completions:
        by_id = {e.id: e for e in examples}
        pairs = [(e, text, 0) for e, text in dry_run.read_completions(args.completions, by_id)]
    else:
        pairs = dry_run.sample_completions(
            examples, args.model, args.samples, args.temperature, args.max_new_tokens
        )
    with Progress(transient=True) as progress:
        task = progress.add_task("grading", total=len(pairs))
        graded = dry_run.grade_pairs(grader, pairs, on_batch=lambda n: progress.advance(task, n))
    summary = dry_run.summarize(graded)
    print(dry_run.format_report(graded, summary))
    if args.output:
        dry_run.write_output(args.output, graded, summary)
        print(f"\nwrote {args.output}")
    return 0


def cmd_grader_validate(args: argparse.Namespace) -> int:
    from openrft.rewards import build_grader

    grader = build_grader(args.grader)
    print(f"ok: {args.grader} builds a {type(grader).__name__} named {grader.name!r}")
    return 0


def cmd_grader_new(args: argparse.Namespace) -> int:
    from openrft.rewards.templates import write_template

    for path in write_template(args.kind, args.directory):
        print(f"wrote {path}")
    print(f"next: cd {args.directory} && python -m pytest")
    return 0


def cmd_grader_serve(args: argparse.Namespace) -> int:
    from openrft.rewards.lambda_host import serve

    serve(args.file, host=args.host, port=args.port)
    return 0
