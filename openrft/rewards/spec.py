"""Graders described as data: a grader file (TOML or JSON) or a table in the job config.

A spec is a mapping with a `type` (and usually a `name`); OpenAI grader JSON objects are
specs as they are. A factory per type (see `registry.GRADER_TYPES`) checks every field and
builds the Grader; mistakes raise GraderError naming the file and the field path, e.g.
`graders/judge.toml: graders.tone.range: must be [low, high]`.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openrft.errors import GraderError
from openrft.rewards.grader import Grader

_MISSING = object()


@dataclass(frozen=True)
class SpecContext:
    """Where a spec came from, for error messages and relative paths, and how to build children."""

    source: str = "<inline>"  # the grader file, or "<inline>"
    path: str = ""  # field path of this spec inside the file ("" at the top)
    base_dir: Path = field(default_factory=Path.cwd)  # relative paths resolve against this
    timeout_s: float = 60.0  # default per-sample timeout (reward.timeout_s)
    build: Callable[[Mapping[str, Any], SpecContext], Grader] | None = None  # nested graders

    def child(self, key: str) -> SpecContext:
        path = f"{self.path}.{key}" if self.path else key
        return SpecContext(self.source, path, self.base_dir, self.timeout_s, self.build)

    def error(self, key: str, message: str) -> GraderError:
        where = ".".join(p for p in (self.path, key) if p)
        return GraderError(f"{self.source}: {where or '<grader>'}: {message}")

    def build_child(self, spec: Any, key: str) -> Grader:
        if not isinstance(spec, Mapping):
            raise self.error(key, f"must be a grader table/object, got {type(spec).__name__}")
        assert self.build is not None, "SpecContext.build is set by the registry"
        return self.build(spec, self.child(key))


def check_fields(spec: Mapping[str, Any], allowed: set[str], ctx: SpecContext) -> None:
    """Unknown fields are mistakes (a typo would otherwise be silently ignored)."""
    for key in spec:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = (
                f"; did you mean '{close[0]}'?"
                if close
                else f"; allowed: {', '.join(sorted(allowed))}"
            )
            raise ctx.error(key, f"unknown field{hint}")


def get_field(
    spec: Mapping[str, Any],
    key: str,
    kinds: type | tuple[type, ...],
    ctx: SpecContext,
    default: Any = _MISSING,
) -> Any:
    """A field of the expected type(s); required unless a default is given."""
    if key not in spec:
        if default is _MISSING:
            raise ctx.error(key, "is required")
        return default
    value = spec[key]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and bool not in kinds:
        raise ctx.error(key, f"must be {_names(kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise ctx.error(key, f"must be {_names(kinds)}, got {type(value).__name__} {value!r:.60}")
    return value


def get_choice(
    spec: Mapping[str, Any],
    key: str,
    choices: tuple[str, ...],
    ctx: SpecContext,
    default: Any = _MISSING,
) -> str:
    value = get_field(spec, key, str, ctx, default)
    if value not in choices:
        raise ctx.error(key, f"{value!r} is not one of: {', '.join(choices)}")
    return value


def load_grader_file(path: str | Path) -> dict[str, Any]:
    """A grader spec from TOML or JSON. `{"grader": {...}}` (OpenAI's request body) is unwrapped."""
    path = Path(path)
    kind = "JSON" if path.suffix == ".json" else "TOML"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GraderError(f"grader file {path}: cannot read: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise GraderError(f"grader file {path}: not UTF-8 text (byte {exc.start})") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise GraderError(f"grader file {path}: not valid {kind}: {exc}") from exc
    except RecursionError as exc:  # both parsers recurse once per level of nesting
        raise GraderError(f"grader file {path}: {kind} nests too deeply") from exc
    if isinstance(data, dict) and set(data) == {"grader"} and isinstance(data["grader"], dict):
        data = data["grader"]
    if not isinstance(data, dict):
        raise GraderError(f"grader file {path}: must hold one grader object")
    return data


def _names(kinds: tuple[type, ...]) -> str:
    words = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a table/object"}  # fmt: skip
    return " or ".join(words.get(k, k.__name__) for k in kinds)
