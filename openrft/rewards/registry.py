"""Builds a Grader from what a job config or the CLI says:

- a built-in name: `exact_label`, `math_answer`;
- a Python reference: `path/to/file.py:function` or `package.module:function`;
- a grader file: `graders/my_grader.toml` or `.json` (an OpenAI grader JSON object as it is);
- a spec mapping with a `type` (the content of such a file).

Grader types come from the `GRADER_TYPES` table of each module in `GRADER_MODULES`, so a new
kind of grader is one module with one table; an unknown type lists the known ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from openrft.errors import GraderError
from openrft.rewards.exact_label import ExactLabelGrader
from openrft.rewards.grader import Grader
from openrft.rewards.math_answer import MathAnswerGrader
from openrft.rewards.python_function import REFERENCE_SYNTAX, PythonFunctionGrader
from openrft.rewards.spec import SpecContext, load_grader_file

GraderFactory = Callable[[Mapping[str, Any], SpecContext], Grader]

BUILTIN_GRADERS: dict[str, Callable[[], Grader]] = {
    "exact_label": ExactLabelGrader,
    "math_answer": MathAnswerGrader,
}

# Modules that export GRADER_TYPES: dict[str, GraderFactory].
GRADER_MODULES: tuple[str, ...] = (
    "openrft.rewards.builtin_types",  # exact_label, math, python_function, regex, json, length...
    "openrft.rewards.openai_graders",  # string_check, text_similarity, multi
    "openrft.rewards.sandboxed",  # python (OpenAI source graders), code (unit tests in a sandbox)
    "openrft.rewards.remote",  # lambda: a Bedrock Lambda-contract HTTP endpoint
    "openrft.rewards.judge",  # judge, score_model, label_model
)


def grader_types() -> dict[str, GraderFactory]:
    table: dict[str, GraderFactory] = {}
    for name in GRADER_MODULES:
        table.update(importlib.import_module(name).GRADER_TYPES)
    return table


def build_grader(
    spec: str | Mapping[str, Any], timeout_s: float = 60.0, base_dir: Path | None = None
) -> Grader:
    """A Grader for a config string (name, reference or grader file) or a spec mapping."""
    if isinstance(spec, Mapping):
        context = SpecContext(
            base_dir=base_dir or Path.cwd(), timeout_s=timeout_s, build=build_from_spec
        )
        return build_from_spec(spec, context)
    name = spec.strip()
    if name in BUILTIN_GRADERS:
        return BUILTIN_GRADERS[name]()
    path = Path(name).expanduser()
    if path.suffix in (".toml", ".json") and ":" not in path.name:
        if not path.is_file():
            raise GraderError(f"grader file {name} not found")
        context = SpecContext(str(path), "", path.resolve().parent, timeout_s, build_from_spec)
        return build_from_spec(load_grader_file(path), context)
    if ":" in name:
        return PythonFunctionGrader(name, timeout_s=timeout_s)
    builtins = ", ".join(sorted(BUILTIN_GRADERS))
    raise GraderError(
        f"unknown grader {spec!r}: use a built-in ({builtins}), a reward function reference "
        f"{REFERENCE_SYNTAX}, or a grader file (.toml or .json)"
    )


def build_from_spec(spec: Mapping[str, Any], context: SpecContext) -> Grader:
    kind = spec.get("type")
    types = grader_types()
    if not isinstance(kind, str) or kind not in types:
        known = ", ".join(sorted(types))
        raise context.error("type", f"unknown grader type {kind!r}; known types: {known}")
    return types[kind](spec, context)
