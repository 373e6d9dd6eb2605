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

from openrft import eval_cli, jobs_cli, sft_cli
from openrft.cli_args import add_run_arguments
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
        resume = RESUME_HINTS.get(getattr(args.handler, "__name__", ""), "")
        hint = f"; resume with `{resume}`" if resume else ""
        print(f"openrft: interrupted{hint}", file=sys.stderr)
        return 130


# What to tell a user who pressed Ctrl-C, by command handler (only runs can be resumed).
RESUME_HINTS = {
    "cmd_train": "openrft train --resume RUN_DIR",
    "cmd_demo": "openrft train --resume RUN_DIR",
    "cmd_sft": "openrft sft --resume RUN_DIR",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openrft", description="Self-hosted reinforcement fine-tuning (GRPO)."
    )
    commands = parser.add_subparsers(metavar="COMMAND")

    train = commands.add_parser("train", help="run an RL job from a TOML config, or resume one")
    add_run_arguments(train)
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
    serve = commands.add_parser("serve", help="OpenAI-compatible chat server for a model")
    serve.add_argument("--model", required=True, help="alias, model directory or .gguf")
    serve.add_argument("--adapter", help="a run's final/ (LoRA adapter), merged at load")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8001)
    serve.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    serve.add_argument(
        "--log-invocations", metavar="FILE.jsonl", help="append every request and reply here"
    )
    serve.add_argument(
        "--max-batch", type=int, default=16, help="concurrent prompts decoded together at most"
    )
    serve.set_defaults(handler=cmd_serve)

    eval_cli.add_commands(commands)
    jobs_cli.add_commands(commands)
    sft_cli.add_commands(commands)
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


def cmd_grade(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from openrft.evaluation import dry_run
    from openrft.rewards import build_grader

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
    from openrft.evaluation.templates import write_template

    for path in write_template(args.kind, args.directory):
        print(f"wrote {path}")
    print(f"next: cd {args.directory} && python -m pytest")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from openrft.serve import serve

    if args.max_batch < 1:
        raise RFTError(f"--max-batch must be at least 1, got {args.max_batch}")
    serve(
        args.model,
        adapter=args.adapter,
        host=args.host,
        port=args.port,
        dtype=args.dtype,
        log_path=args.log_invocations,
        max_batch=args.max_batch,
    )
    return 0


def cmd_grader_serve(args: argparse.Namespace) -> int:
    from openrft.rewards.lambda_host import serve

    serve(args.file, host=args.host, port=args.port)
    return 0


EXIT_STOPPED = 75  # the run stopped on request after a checkpoint; resume with --resume


def _run(config, run_dir: Path, resume: bool, progress: bool) -> int:
    import signal
    import threading

    from openrft.train.loop import train
    from openrft.train.status import write_status

    stop = threading.Event()
    # SIGTERM (the job server's stop, `kill PID`) finishes the step and checkpoints.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        summary = train(config, run_dir, resume=resume, show_progress=progress, stop=stop)
    except RFTError as exc:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_status(run_dir, "failed", message=f"{type(exc).__name__}: {exc}")
        raise
    before = "-" if summary.val_before is None else f"{summary.val_before:.3f}"
    after = "-" if summary.val_after is None else f"{summary.val_after:.3f}"
    gain = ""
    if summary.val_before is not None and summary.val_after is not None:
        gain = f" ({summary.val_after - summary.val_before:+.3f})"
    if summary.status == "stopped":
        print(
            f"\nstopped after step {summary.steps}; resume with: openrft train --resume {run_dir}"
        )
        return EXIT_STOPPED
    print(f"\nvalidation reward: before {before} -> after {after}{gain}")
    print(f"steps: {summary.steps}   wall time: {summary.wall_s:.0f} s")
    print(f"run: {summary.run_dir}\nreport: {summary.report}")
    return 0


def _default_run_dir(parent: str, name: str) -> Path:
    return Path(parent) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


if __name__ == "__main__":
    sys.exit(main())
