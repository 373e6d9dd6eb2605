"""`openrft preflight`: will a job fit on this machine, and how long will it take?

openrft preflight CONFIG [--set section.key=value ...] [--no-calibrate] [--json]
                         [--prompt-tokens N]

Prints the peak memory estimate by term (openrft.train.preflight: from the config and the
model's config.json, no weights loaded) against the memory available, and, unless
--no-calibrate, a time-per-step and total-time estimate from a short calibration on this
machine (openrft.train.calibrate: loads the model). Exit code 1 when the job will not fit,
with the knobs to turn; 0 when it fits.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from openrft.cli.args import add_set_argument

EXIT_WONT_FIT = 1


def add_commands(commands: Any) -> None:
    """Add `preflight` to the `openrft` sub-command parser."""
    parser = commands.add_parser(
        "preflight", help="estimate a job's peak memory and time per step before running it"
    )
    parser.add_argument("config", nargs="?", help="job config (TOML); defaults when omitted")
    add_set_argument(parser)
    parser.add_argument(
        "--no-calibrate",
        action="store_true",
        help="memory only: do not load the model to time a step",
    )
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        metavar="N",
        help="prompt length to assume (default: data.max_prompt_tokens, the longest allowed)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=cmd_preflight)


def cmd_preflight(args: argparse.Namespace) -> int:
    from openrft.config import load_config
    from openrft.errors import ModelError
    from openrft.train.preflight import estimate_memory, model_architecture
    from openrft.train.preflight_check import check_fit, rough_prompt_tokens

    config = load_config(args.config, args.set)
    arch = model_architecture(config.model.name)
    if arch is None:
        raise ModelError(
            f"cannot read the architecture of {config.model.name!r} without loading it "
            "(a .gguf file not yet converted, or a Hugging Face id not in the cache)"
        )
    sample = None if args.prompt_tokens else _sample(config)
    if args.prompt_tokens:
        prompt, basis = args.prompt_tokens, "--prompt-tokens"
    elif sample is not None:
        prompt, basis = sample.max_tokens, f"the longest of the first {len(sample.prompts)} rows"
    else:
        prompt = rough_prompt_tokens(config) or config.data.max_prompt_tokens
        basis = "rows read without a tokenizer, or data.max_prompt_tokens"
    fit = check_fit(config, arch, prompt)
    worst = estimate_memory(config, arch, None, fit.estimate.device).peak
    timing = None
    if not args.no_calibrate and fit.fits:
        from openrft.train.calibrate import calibrate

        if not args.json:
            print("calibrating (loads the model, times a short rollout and update)...", flush=True)
        timing = calibrate(config, sample)
    extra = {"prompt_basis": basis, "worst_case_peak_bytes": worst,
             "mean_prompt_tokens": sample.mean_tokens if sample else None}  # fmt: skip
    if args.json:
        print(json.dumps(_as_json(config, fit, timing, extra), indent=2))
    else:
        _print(config, fit, timing, extra)
    return 0 if fit.fits else EXIT_WONT_FIT


def _sample(config):
    """The first training rows' prompts, tokenized (the tokenizer and the rows only, no
    weights); None when they cannot be read here."""
    try:
        from transformers import AutoTokenizer

        from openrft.models.load import resolve_model_dir
        from openrft.train.calibrate import sample_prompts

        tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(config.model.name))
        return sample_prompts(config, tokenizer)
    except Exception:  # e.g. a model or data set not fetched yet: the rough length then
        return None


def _as_json(config, fit, timing, extra) -> dict[str, Any]:
    estimate = fit.estimate
    return {
        "model": config.model.name,
        "fits": fit.fits,
        "peak_bytes": estimate.peak,
        "available_bytes": fit.available,
        "device": estimate.device,
        "dominant": estimate.dominant,
        "prompt_tokens": estimate.prompt_tokens,
        "params": estimate.params,
        "trainable_params": estimate.trainable,
        "terms": estimate.terms,
        "phases": estimate.phases,
        "advice": list(fit.advice),
        "notes": list(estimate.notes),
        **extra,
        "time": asdict(timing) if timing is not None else None,
    }


def _print(config, fit, timing, extra) -> None:
    from rich.console import Console
    from rich.table import Table

    from openrft.train.preflight import GIB, TERM_LABELS
    from openrft.train.preflight_check import gib

    estimate = fit.estimate
    console = Console()
    table = Table(
        title=f"preflight: {config.name} ({config.model.name}, {estimate.params / 1e6:.0f}M "
        f"params, {estimate.trainable / 1e6:.2f}M trainable, prompts of "
        f"{estimate.prompt_tokens} tokens)"
    )
    table.add_column("term")
    table.add_column("GiB", justify="right")
    table.add_column("phase")
    phase_of = {
        "loading": "loading", "kv_cache": "rollout", "rollout_transient": "rollout",
        "eval_kv_cache": "validation", "activations": "update", "logits": "update",
    }  # fmt: skip
    for name, value in estimate.terms.items():
        if value == 0:
            continue
        marker = " *" if name == estimate.dominant else ""
        table.add_row(TERM_LABELS[name] + marker, f"{value / GIB:.3f}", phase_of.get(name, "held"))
    for phase, value in estimate.phases.items():
        table.add_row(f"[bold]peak while {phase}[/bold]", f"{value / GIB:.3f}", "")
    console.print(table)
    console.print(f"estimated peak: [bold]{gib(estimate.peak)}[/bold] (* the largest term); "
                  f"available ({estimate.device}): {gib(fit.available)}")  # fmt: skip
    console.print(
        f"prompts of {estimate.prompt_tokens} tokens ({extra['prompt_basis']}); at "
        f"data.max_prompt_tokens = {config.data.max_prompt_tokens}: "
        f"{gib(extra['worst_case_peak_bytes'])}"
    )
    for note in estimate.notes:
        console.print(f"note: {note}")
    if timing is not None:
        console.print(
            f"time per step: [bold]{timing.step_s:.1f} s[/bold] (rollout {timing.rollout_s:.1f} "
            f"s, update {timing.update_s:.1f} s, weight sync {timing.sync_s:.2f} s); "
            f"{timing.steps} steps, validation {timing.validation_s:.1f} s each: about "
            f"[bold]{_duration(timing.total_s)}[/bold] in all (calibrated in "
            f"{timing.calibration_s:.0f} s: {timing.forward}; {timing.engine})"
        )
    if fit.fits:
        console.print("[green]fits[/green]")
    else:
        print(f"openrft: will not fit: {fit.message()}", file=sys.stderr)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
