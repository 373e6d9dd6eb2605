"""`openrft sft` and `openrft export`: supervised fine-tuning and exporting a run.

openrft sft CONFIG [--output RUN_DIR] [--max-steps N] [--set k=v ...] [--from-reference]
openrft sft --resume RUN_DIR
openrft export RUN_DIR --format peft|merged|gguf --out PATH [--dtype float32|bfloat16|float16]
                         [--quant q8_0|q5_1|q5_0|q4_1|q4_0|q4_k_m|q5_k_m|q4_k|q5_k|q6_k]

Heavy imports (torch, transformers) happen inside the handlers, so `openrft --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from openrft.cli.args import EXIT_STOPPED, add_run_arguments, default_run_dir

EXPORT_FORMATS = ("peft", "merged", "gguf")  # openrft.export.FORMATS
EXPORT_DTYPES = ("float32", "bfloat16", "float16")  # openrft.export.DTYPES
# openrft.export.GGUF_QUANTS (tests/test_export.py checks they agree)
EXPORT_QUANTS = ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "q4_k_m", "q5_k_m", "q4_k", "q5_k", "q6_k")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `sft` and `export` to the `openrft` sub-command parser."""
    sft = commands.add_parser("sft", help="supervised fine-tuning on chat data, or resume a run")
    add_run_arguments(sft)
    sft.add_argument(
        "--from-reference",
        action="store_true",
        help="read RL prompt rows: each row's reference_answer becomes the assistant turn",
    )
    sft.set_defaults(handler=cmd_sft)

    export = commands.add_parser(
        "export", help="export a run as a PEFT adapter, a merged model or a GGUF file"
    )
    export.add_argument("run_dir", help="run directory, its final/ or a checkpoint directory")
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    export.add_argument("--out", required=True, help="output directory (or .gguf file for gguf)")
    export.add_argument(
        "--dtype", default="float32", choices=EXPORT_DTYPES, help="merged/gguf weights dtype"
    )
    export.add_argument(
        "--quant",
        default="",
        choices=EXPORT_QUANTS,
        help="gguf: block-quantized weights (the k-quant mixtures: docs/serving.md)",
    )
    export.set_defaults(handler=cmd_export)


def cmd_sft(args: argparse.Namespace) -> int:
    from openrft.config import load_config
    from openrft.train.sft import SFTOptions, read_options

    overrides = list(args.set) + (
        [f"train.max_steps={args.max_steps}"] if args.max_steps is not None else []
    )
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.toml").exists():
            print(f"openrft: error: {run_dir} has no config.toml; is it a run directory?",
                  file=sys.stderr)  # fmt: skip
            return 1
        config = load_config(run_dir / "config.toml", overrides)
        options = SFTOptions(from_reference=True) if args.from_reference else read_options(run_dir)
        return _run(config, run_dir, True, not args.no_progress, options)
    if not args.config:
        print("openrft: error: give a CONFIG file, or --resume RUN_DIR", file=sys.stderr)
        return 2
    config = load_config(args.config, overrides)
    options = SFTOptions(from_reference=args.from_reference)
    run_dir = Path(args.output) if args.output else default_run_dir(config.output_dir, config.name)
    if (run_dir / "metrics.jsonl").exists():
        print(f"openrft: error: {run_dir} already holds a run; use --resume {run_dir} or another "
              "--output", file=sys.stderr)  # fmt: skip
        return 1
    return _run(config, run_dir, False, not args.no_progress, options)


def _run(config, run_dir: Path, resume: bool, progress: bool, options) -> int:
    import signal
    import threading

    from openrft.errors import RFTError
    from openrft.train.sft import train_sft
    from openrft.train.status import write_status

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # finish the step, checkpoint, exit 75
    try:
        summary = train_sft(config, run_dir, resume, progress, stop, options)
    except RFTError as exc:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_status(run_dir, "failed", message=f"{type(exc).__name__}: {exc}")
        raise
    if summary.status == "stopped":
        print(f"\nstopped after step {summary.steps}; resume with: openrft sft --resume {run_dir}")
        return EXIT_STOPPED
    before, after = summary.val_before, summary.val_after
    change = f" ({after - before:+.3f})" if before is not None and after is not None else ""
    print(f"\nvalidation loss: before {_fmt(before)} -> after {_fmt(after)}{change}")
    print(f"steps: {summary.steps}   wall time: {summary.wall_s:.0f} s")
    print(f"run: {summary.run_dir}\nreport: {summary.report}")
    print(f'next: RFT from it with model.init_from = "{run_dir}", or '
          f"openrft export {run_dir} --format gguf --out {run_dir}/export")  # fmt: skip
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from openrft.export import export

    path = export(args.run_dir, args.format, args.out, args.dtype, args.quant)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0
    size = size or path.stat().st_size
    print(f"wrote {path} ({size / 1e6:.1f} MB)")
    hints = {
        "peft": f"PeftModel.from_pretrained(base_model, '{path}')",
        "merged": f"AutoModelForCausalLM.from_pretrained('{path}')",
        "gguf": f"llama-cli -m {path}  or  AutoModelForCausalLM.from_pretrained("
        f"'{path.parent}', gguf_file='{path.name}')",
    }
    print(f"load with: {hints[args.format]}")
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
