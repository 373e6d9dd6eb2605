"""From plain TOML data to typed config objects (openrft.config): the builder that checks every
value against its field's type and names the field when it does not fit, with a suggestion
for a misspelt name; and the names accepted besides the native ones (Bedrock's
hyperparameters in a `[hyperParameters]` table, with Bedrock's ranges; the old
`algo.advantage_scaling`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

from openrft.errors import ConfigError

ADVANTAGE_SCALING_ALIASES = {"group": "grpo", "none": "drgrpo"}
MAX_DEPTH = 64  # levels of nesting in a table-valued field (reward.grader, env.verifiers_args)

# Bedrock RFTHyperParameters names -> (native field, Bedrock's allowed range or None).
BEDROCK_ALIASES: dict[str, tuple[str, tuple[float, float] | None]] = {
    "epochCount": ("train.epochs", (1, 50)),
    "batchSize": ("train.prompts_per_step", (16, 512)),
    "learningRate": ("train.learning_rate", (1e-7, 1e-3)),
    "trainingSamplePerPrompt": ("rollout.samples_per_prompt", (2, 16)),
    "inferenceMaxTokens": ("rollout.max_new_tokens", None),
    "maxPromptLength": ("data.max_prompt_tokens", None),
    "evalInterval": ("eval.interval", (1, 100)),
}
BEDROCK_SECTION = "hyperParameters"


def apply_bedrock_aliases(raw: dict[str, Any]) -> dict[str, Any]:
    aliases = raw.pop(BEDROCK_SECTION, None)
    if aliases is None:
        return raw
    if not isinstance(aliases, dict):
        raise ConfigError(BEDROCK_SECTION, "must be a table")
    for name, value in aliases.items():
        if name not in BEDROCK_ALIASES:
            hint = suggest(name, BEDROCK_ALIASES)
            raise ConfigError(f"{BEDROCK_SECTION}.{name}", f"unknown Bedrock hyperparameter{hint}")
        target, allowed = BEDROCK_ALIASES[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{BEDROCK_SECTION}.{name}", f"must be a number, got {value!r}")
        if allowed and not allowed[0] <= value <= allowed[1]:
            raise ConfigError(
                f"{BEDROCK_SECTION}.{name}",
                f"{value} is out of Bedrock's range {allowed[0]} to {allowed[1]}",
            )
        section, key = target.split(".")
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(section, f"must be a table, got {table!r}")
        if key in table and table[key] != value:
            raise ConfigError(
                f"{BEDROCK_SECTION}.{name}",
                f"conflicts with {target} = {table[key]!r}; set only one of them",
            )
        table[key] = value
    return raw


def apply_advantage_scaling(raw: dict[str, Any]) -> dict[str, Any]:
    """algo.advantage_scaling (before algo.advantage existed) as the estimator it named."""
    algo = raw.get("algo")
    if not isinstance(algo, dict) or "advantage_scaling" not in algo:
        return raw
    algo = dict(algo)
    old = algo.pop("advantage_scaling")
    if old == "batch":
        raise ConfigError(
            "algo.advantage_scaling",
            "was replaced by algo.advantage; 'batch' (the group-centred reward over the batch "
            "std of the rewards) has no exact equivalent: the nearest is algo.advantage = "
            "'reinforce_pp_baseline' (group-centred, then whitened over the batch)",
        )
    if not isinstance(old, str) or old not in ADVANTAGE_SCALING_ALIASES:
        raise ConfigError(
            "algo.advantage_scaling", f"{old!r}: this field was replaced by algo.advantage"
        )
    estimator = ADVANTAGE_SCALING_ALIASES[old]
    if algo.get("advantage", estimator) != estimator:
        raise ConfigError(
            "algo.advantage_scaling",
            f"{old!r} means algo.advantage = {estimator!r}, which conflicts with "
            f"algo.advantage = {algo['advantage']!r}; set only algo.advantage",
        )
    algo["advantage"] = estimator
    return {**raw, "algo": algo}


def build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(prefix.rstrip(".") or "<root>", f"must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            # An empty, blank or unprintable key is shown quoted, so the message shows it.
            shown = key if isinstance(key, str) and key.strip() and key.isprintable() else repr(key)
            where = f"{prefix}{shown}"
            raise ConfigError(where, f"unknown field{suggest(key, known)}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        name = f"{prefix}{f.name}"
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            values[f.name] = build(hint, raw[f.name], f"{name}.")
        else:
            values[f.name] = coerce(name, hint, raw[f.name])
    return cls(**values)


def coerce(name: str, hint: Any, value: Any) -> Any:
    """Check a TOML value against a field's type; ints are accepted for floats."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(name, f"{value!r} is not one of: {', '.join(map(str, choices))}")
        return value
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        tables = [a for a in options if typing.get_origin(a) is dict]
        if tables and isinstance(value, dict):
            return coerce(name, tables[0], value)
        return coerce(name, options[0], value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(name, f"must be a table, got {value!r}")
        check_writable(name, value)
        return copy.deepcopy(value)
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(name, f"must be a list, got {value!r}")
        item_type = typing.get_args(hint)[0]
        return tuple(coerce(f"{name}[{i}]", item_type, v) for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(name, f"must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(name, f"must be a string, got {value!r}")
        check_writable(name, value)
        return value
    raise ConfigError(name, f"unsupported type {hint}")


def check_writable(name: str, value: Any) -> None:
    """Refuse what the config could not be written back as (config.toml of every run): text
    that is not Unicode (a lone surrogate, from JSON's \\ud800 or undecodable command-line
    bytes), null in an array (TOML has none), nesting deeper than MAX_DEPTH levels."""
    stack: list[tuple[str, Any, int]] = [(name, value, 0)]
    while stack:
        where, item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(where, f"nests deeper than {MAX_DEPTH} levels")
        if isinstance(item, str) and not _is_unicode(item):
            raise ConfigError(where, f"{item!r:.80} is not valid Unicode text")
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str) or not _is_unicode(key):
                    raise ConfigError(where, f"key {key!r:.80} is not valid Unicode text")
                stack.append((f"{where}.{key}", child, depth + 1))
        elif isinstance(item, list | tuple):
            for index, child in enumerate(item):
                if child is None:
                    raise ConfigError(f"{where}[{index}]", "null is not a TOML value")
                stack.append((f"{where}[{index}]", child, depth + 1))


def check_body(body: dict[str, Any], limit: int = MAX_DEPTH) -> None:
    """Refuse a request body (JSON) that nests deeper than `limit` levels (copying or checking
    it would exhaust Python's stack) or holds text that is not Unicode (a lone surrogate, which
    JSON's \\ud800 escape makes, could be neither stored nor answered), naming the member."""
    for key, value in body.items():
        field = key if _is_unicode(key) else repr(key)
        stack = [(key, 0), (value, 1)]
        while stack:
            item, depth = stack.pop()
            if isinstance(item, str) and not _is_unicode(item):
                raise ConfigError(field, f"{item!r:.80} is not valid Unicode text")
            if not isinstance(item, dict | list):
                continue
            if depth > limit:
                raise ConfigError(field, f"nests deeper than {limit} levels")
            children = [*item, *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def suggest(name: str, options: Any) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(sorted(options))}"
