"""`openrft eval` and `openrft baseline`: evaluate a model (or compare several) and the Step-0
check before RFT.

openrft eval --model M [--adapter RUN_DIR/final] --data FILE --grader G [--samples K] ...
openrft eval --compare M M+ADAPTER_DIR ... --data FILE --grader G [...]
openrft baseline --model M --data FILE --grader G [--samples 8] [--prompts 32] ...

Models load with `models.load.load_model` (plus a PEFT adapter), generate with `HFEngine`
(greedy at temperature 0, seeded otherwise); see docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openrft.errors import DatasetError, ModelError, RowError

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from openrft.evaluation.evaluate import EvalResult
    from openrft.rewards import Grader
    from openrft.types import Example, SamplingParams

MODEL_SPEC = "MODEL or MODEL+ADAPTER_DIR (e.g. smollm2-135m-instruct+runs/demo/final)"


def add_commands(subparsers: Any) -> None:
    """Add `eval` and `baseline` to the `openrft` subcommands."""
    _add_eval(subparsers)
    _add_baseline(subparsers)


def _add_eval(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate a model, or compare several: mean reward, pass@k, errors"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="built-in alias, HF model directory or .gguf file")
    source.add_argument(
        "--compare", nargs="+", metavar="SPEC", help=f"models to compare; each {MODEL_SPEC}"
    )
    parser.add_argument(
        "--adapter", help="adapter dir, run dir (its final/) or checkpoint dir (its model/)"
    )
    _add_common(parser, samples=1, temperature=None)
    parser.add_argument("--limit", type=_positive, help="evaluate only the first N prompts")
    parser.add_argument(
        "--top", type=_positive, default=10, help="differing prompts listed by --compare"
    )
    parser.add_argument(
        "--output", help="OUT.json (OUT.md and, with --compare, OUT.png are written beside it)"
    )
    parser.set_defaults(handler=cmd_eval)


def _add_baseline(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "baseline", help="Step 0: is RFT worth it? Sample G responses for N prompts and advise"
    )
    parser.add_argument("--model", required=True, help="built-in alias, HF directory or .gguf")
    parser.add_argument("--adapter", help="evaluate with this adapter (as in `openrft eval`)")
    _add_common(parser, samples=8, temperature=1.0)
    parser.add_argument(
        "--prompts", type=_positive, default=32, help="prompts sampled (seeded) from the data"
    )
    parser.add_argument(
        "--rft-unnecessary-above",
        type=float,
        default=0.95,
        help="mean reward above which RFT is unnecessary (0.95)",
    )
    parser.add_argument(
        "--sft-first-share",
        type=float,
        default=0.95,
        help="share of prompts with no success from which SFT comes first (0.95)",
    )
    parser.add_argument("--output", help="write the numbers and advice as JSON")
    parser.set_defaults(handler=cmd_baseline)


def _add_common(parser: argparse.ArgumentParser, samples: int, temperature: float | None) -> None:
    parser.add_argument(
        "--data", help="JSONL file or builtin:sst2/validation (with --verifiers: its tasks)"
    )
    parser.add_argument(
        "--grader", help="built-in name, file.py:fn or grader file (not with --agent)"
    )
    parser.add_argument(
        "--samples", type=_positive, default=samples, help=f"completions per prompt ({samples})"
    )
    default_t = "0 with one sample, else 1.0" if temperature is None else f"{temperature:g}"
    parser.add_argument(
        "--temperature", type=_non_negative, default=temperature, help=f"0 = greedy ({default_t})"
    )
    parser.add_argument("--max-new-tokens", type=_positive, default=64, help="generation cap")
    parser.add_argument(
        "--stop", action="append", metavar="TEXT", help="a stop string (repeatable)"
    )
    parser.add_argument(
        "--success-threshold", type=float, default=1.0, help="a score >= this is a success"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--chat-template", default="model", choices=["model", "plain"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch-size", type=_positive, default=64, help="sequences per batch")
    parser.add_argument("--timeout", type=float, default=60.0, help="grader timeout per sample")
    episodes = parser.add_argument_group("episodes (docs/agentic.md): as a job's [env] section")
    episodes.add_argument("--tools", help="tools file (or builtin:calculator): run episodes")
    episodes.add_argument("--environment", help="file.py:make_env (or builtin:NAME): run episodes")
    episodes.add_argument("--agent", help="file.py:run (docs/agents.md): its return is the reward")
    episodes.add_argument("--openenv-url", help="an OpenEnv server (docs/openenv.md)")
    episodes.add_argument(
        "--verifiers", help="a verifiers taskset (docs/verifiers.md): its tasks and rewards"
    )
    episodes.add_argument(
        "--verifiers-args", default="{}", help="the taskset's config fields as a JSON object"
    )
    episodes.add_argument(
        "--openenv-action", default="json", help="json or text:<field> (with --openenv-url)"
    )
    episodes.add_argument("--max-turns", type=_positive, default=6, help="assistant turns (6)")
    episodes.add_argument(
        "--env-reward", default="episode", choices=["episode", "turns", "sum"],
        help="the grade, the per-turn rewards' sum, or both (episode)",
    )  # fmt: skip


def cmd_eval(args: argparse.Namespace) -> int:
    from openrft.evaluation.evaluate import compare, format_summary, write_comparison, write_report

    if args.compare and args.adapter:
        print("openrft: error: with --compare, give adapters as MODEL+ADAPTER_DIR", file=sys.stderr)
        return 2
    grader = grader_for(args)
    params = sampling_params(args)
    examples = load_prompts(args.data, limit=args.limit) if args.data else []
    output = Path(args.output or f"{'compare' if args.compare else 'eval'}-{_stamp()}.json")
    if not args.compare:
        result = evaluate_model(args.model, args.adapter, examples, args, grader, params)
        print(format_summary(result))
        report = write_report(result, output)
        print(f"\nwrote {output} and {report}")
        return 0
    if len(args.compare) < 2:
        print("openrft: error: --compare needs at least two models", file=sys.stderr)
        return 2
    results = {}
    for spec in args.compare:
        model, adapter = parse_model_spec(spec)
        results[spec] = evaluate_model(model, adapter, examples, args, grader, params)
        print(f"\n== {spec}\n{format_summary(results[spec])}")
    comparison = compare(results, top=args.top)
    paths = write_comparison(comparison, output)
    print(f"\nprompts where the models differ most: {len(comparison.differing)}, in {paths['md']}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def grader_for(args: argparse.Namespace) -> Any:
    """--grader's grader. With --agent the agent's return is the reward and no grader is
    called: a built-in one stands in where the code wants one."""
    from openrft.errors import RFTError
    from openrft.rewards import build_grader

    scorer = f"agent {args.agent}" if args.agent else ""
    scorer = scorer or (f"verifiers {args.verifiers}" if args.verifiers else "")
    if args.grader and scorer:
        raise RFTError(f"{scorer} gives the reward itself: leave out --grader")
    if scorer:
        args.grader = scorer  # what the report names as the reward
        return build_grader("exact_label", args.timeout)
    if not args.data:
        raise RFTError("--data is required (or --verifiers)")
    if not args.grader:
        raise RFTError("--grader is required (or --agent, or --verifiers)")
    return build_grader(args.grader, args.timeout)


def cmd_baseline(args: argparse.Namespace) -> int:
    import json

    from openrft.data import split_holdout
    from openrft.evaluation.baseline import advise, format_baseline

    grader = grader_for(args)
    params = sampling_params(args)

    def sample(examples: list[Example]) -> list[Example]:
        if args.prompts < len(examples):  # a seeded sample: a sorted file's head would bias it
            _, examples = split_holdout(examples, args.prompts, args.seed)
        return examples

    examples = sample(load_prompts(args.data)) if args.data else []
    result = evaluate_model(args.model, args.adapter, examples, args, grader, params, sample)
    base = advise(result, args.rft_unnecessary_above, args.sft_first_share)
    print(format_baseline(base))
    if args.output:
        Path(args.output).write_text(json.dumps(base.to_dict(), indent=1, ensure_ascii=False))
        print(f"\nwrote {args.output}")
    return 0


def evaluate_model(
    model: str,
    adapter: str | None,
    examples: Sequence[Example],
    args: argparse.Namespace,
    grader: Grader,
    params: SamplingParams,
    pick: Any = None,
) -> EvalResult:
    """Load `model` (+ `adapter`), render the prompts with its tokenizer, evaluate. With
    --verifiers and no prompts, the taskset's tasks (`pick` chooses among them; default:
    the first --limit)."""
    import torch

    from openrft.data import encode_prompt
    from openrft.evaluation.evaluate import evaluate
    from openrft.rollout.hf_engine import HFEngine
    from openrft.rollout.verifiers_env import task_examples
    from openrft.train.episodes import row_tools

    name = model + (f" + {adapter}" if adapter else "")
    print(f"openrft: {name}: {len(examples)} prompts x {params.n} samples", file=sys.stderr)
    net, tokenizer, adapter_dir = load_eval_model(model, adapter, args.dtype)
    torch.manual_seed(params.seed)
    engine = HFEngine(net, tokenizer, args.batch_size)
    job = episode_job_for(args, tokenizer, engine.end_token_ids, model)
    if job is not None and job.verifiers is not None and not examples:
        examples = task_examples(job.verifiers.tasks, job.verifiers.settings.taskset)
        limit = getattr(args, "limit", None)
        examples = pick(examples) if pick else examples[:limit] if limit else examples
    tools = job.tools if job else None
    prompt_ids = [
        encode_prompt(
            e.messages, tokenizer, args.chat_template, row_tools(e, tools) if job else None
        )
        for e in examples
    ]
    try:
        result = evaluate(engine, examples, prompt_ids, params, grader, args.success_threshold, job)
    finally:
        if job is not None:
            job.close()
    result.info.update(
        model=model,
        adapter=str(adapter_dir) if adapter_dir else None,
        data=args.data,
        grader=args.grader,
    )
    return result


def episode_job_for(
    args: argparse.Namespace, tokenizer: Any, end_token_ids: frozenset[int], model: str = ""
):
    """The episode machinery of `--tools` / `--environment` / `--agent` / `--openenv-url`
    / `--verifiers` (None: single turns)."""
    kinds = ("tools", "environment", "agent", "openenv_url", "verifiers")
    if not any(getattr(args, name, None) for name in kinds):
        return None
    from openrft.config import load_config
    from openrft.train.episodes import episode_job

    overrides = [
        f"env.max_turns={args.max_turns}",
        f"env.reward={args.env_reward}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"model.chat_template={args.chat_template}",
    ]
    if args.tools:
        overrides.append(f"env.tools={args.tools}")
    if args.environment:
        overrides.append(f"env.environment={args.environment}")
    if args.agent:
        overrides.append(f"env.agent={args.agent}")
    if args.openenv_url:
        overrides += [
            f"env.openenv_url={args.openenv_url}",
            f"env.openenv_action={args.openenv_action}",
        ]
    config = load_config(None, overrides)
    if args.verifiers:
        env = replace(
            config.env, verifiers=args.verifiers, verifiers_args=_json_table(args.verifiers_args)
        )
        config = replace(config, env=env, model=replace(config.model, name=model))
    return episode_job(config, tokenizer, end_token_ids)


def _json_table(text: str) -> dict[str, Any]:
    import json

    from openrft.errors import ConfigError

    try:
        table = json.loads(text)
    except ValueError as error:
        raise ConfigError("--verifiers-args", f"not JSON: {error}") from error
    if not isinstance(table, dict):
        raise ConfigError("--verifiers-args", "must be a JSON object")
    return table


def load_eval_model(
    model: str, adapter: str | None, dtype: str = "float32"
) -> tuple[nn.Module, PreTrainedTokenizerBase, Path | None]:
    """The model (with the adapter merged in, or a run's full weights) and its tokenizer.

    `adapter` is an adapter directory, a run directory (its final/) or a checkpoint
    directory (its model/), resolved as `model.init_from` is."""
    from openrft.models.load import load_model
    from openrft.train.policy import resolve_init_from

    net, tokenizer = load_model(model, dtype)
    if not adapter:
        return net, tokenizer, None
    try:
        path = resolve_init_from(adapter)
    except ModelError as exc:
        raise ModelError(f"--adapter {adapter}: no adapter or model weights found") from exc
    assert path is not None
    if not (path / "adapter_config.json").exists():  # a full fine-tuning run's weights
        net, _ = load_model(str(path), dtype)
        return net, tokenizer, path
    import peft

    try:
        net = peft.PeftModel.from_pretrained(net, path).merge_and_unload()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelError(f"could not load adapter {path} onto {model}: {exc}") from exc
    return net, tokenizer, path


def parse_model_spec(spec: str) -> tuple[str, str | None]:
    """`MODEL` or `MODEL+ADAPTER_DIR` -> (model, adapter or None). A spec that is itself an
    existing path is a model even when its name holds a '+'."""
    if "+" not in spec or Path(spec).expanduser().exists():
        return spec, None
    model, _, adapter = spec.partition("+")
    if not model or not adapter:
        raise ModelError(f"bad model spec {spec!r}: use {MODEL_SPEC}")
    return model, adapter


def load_prompts(spec: str, limit: int | None = None) -> list[Example]:
    """The data file's rows (`builtin:` specs prepared on first use), the first `limit` of them."""
    from openrft.data import load_examples, resolve_data_path

    path = resolve_data_path(spec, field="--data")
    examples = load_examples(path)
    if not examples:
        raise DatasetError([RowError(str(path), 0, "", "the file has no rows")])
    return examples[:limit] if limit else examples


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    """Greedy at temperature 0; the default temperature is 0 for one sample, else 1.0."""
    from openrft.types import SamplingParams

    temperature = args.temperature
    if temperature is None:
        temperature = 0.0 if args.samples == 1 else 1.0
    return SamplingParams(
        n=args.samples,
        temperature=temperature,
        max_new_tokens=args.max_new_tokens,
        stop=tuple(args.stop or ()),
        seed=args.seed,
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
