"""Settings and input strategies shared by the fuzz tests (docs/reliability.md, Fuzzing).

Every test runs a fixed, derandomized set of inputs (the same in every CI run) with no
example database written anywhere. `OPENRFT_FUZZ_EXAMPLES=100000` runs that many inputs per
test instead, drawn afresh each run (a failure prints the `@reproduce_failure` line).

Inputs are random junk (text, bytes, JSON values, deep nesting) and structure-aware
mutations of valid inputs: `mutated(base)` drops keys, replaces values by junk of any JSON
type (NaN, inf, huge numbers, unicode, nested garbage) and adds unknown keys.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from typing import Any

import tomli_w
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES_ENV = "OPENRFT_FUZZ_EXAMPLES"
PROFILE = "openrft-fuzz"
settings.register_profile(
    PROFILE,
    database=None,  # no .hypothesis/ directory in the working tree
    derandomize=True,  # CI runs the same inputs every time
    deadline=None,  # a shared 2-core CI machine has slow moments; time is bounded by counts
    print_blob=True,
)


def fuzz(examples: int, slow: bool = False) -> settings:
    """The settings of one fuzz test: `examples` inputs, or $OPENRFT_FUZZ_EXAMPLES (random)."""
    override = os.environ.get(EXAMPLES_ENV, "").strip()
    checks = [HealthCheck.too_slow, HealthCheck.data_too_large] if slow else []
    return settings(
        settings.get_profile(PROFILE),
        max_examples=int(override) if override else examples,
        derandomize=not override,
        suppress_health_check=checks,
    )


# --- junk -----------------------------------------------------------------------------------

# Strings that break naive parsers: empty, whitespace, unicode digits and separators, a BOM,
# lone surrogates, NUL, markup of the formats under test.
NASTY_TEXT = (
    "", " ", "\t\n", "\x00", "\ufeff", "\u2028", "\ud800", "²", "٣", "-1", "--1", "1e309",
    "NaN", "Infinity", "null", "{{", "}}", "{{ item }}", "${x}", "'", '"', "\\", "é" * 3,
    "🙂", "a" * 300,
)  # fmt: skip
NUMBERS = (0, -1, 1, 2, 2**31, 2**63, -(2**63) - 1, 10**30, 10**400, 0.5, -0.0, 1e-320, 1e308,
           math.inf, -math.inf, math.nan)  # fmt: skip

texts = st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=20))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(NUMBERS),
    st.integers(),
    st.floats(),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=10,
)


def nested(depth: int, kind: str = "list") -> Any:
    """A value nested `depth` levels deep, built without recursion."""
    value: Any = {} if kind == "schema" else 0
    for _ in range(depth):
        value = [value] if kind == "list" else {"items" if kind == "schema" else "a": value}
    return value


# Deep nesting travels as a marker string, which `json_text` and `toml_text` expand into text
# nested that deep (json.dumps itself cannot write it) and `materialize` into Python objects.
DEEP = re.compile(r'"@@deep-(\d+)-(list|dict|schema)@@"')
# How each kind opens and closes a level, and its innermost value, in JSON and in TOML.
LEVELS = {
    "list": (("[", "]", "0"), ("[", "]", "0")),
    "dict": (('{"a":', "}", "0"), ("{a = ", "}", "0")),
    "schema": (('{"items":', "}", "{}"), ("{items = ", "}", "{}")),
}
# Depths around the recursion limits of json, tomllib, copy.deepcopy and jsonschema.
depths = st.sampled_from((50, 200, 350, 600, 990, 1500, 5000))
deep_values = st.builds("@@deep-{}-{}@@".format, depths, st.sampled_from(tuple(LEVELS)))
junk = st.one_of(json_values, json_values, deep_values)


def _expander(syntax: int):
    def expand(match: re.Match[str]) -> str:
        depth, kind = int(match.group(1)), match.group(2)
        opening, closing, inner = LEVELS[kind][syntax]
        return opening * depth + inner + closing * depth

    return expand


def json_text(value: Any) -> str:
    """JSON text of a value (NaN and inf as Python writes them), deep markers expanded."""
    return DEEP.sub(_expander(0), json.dumps(value, ensure_ascii=False))


def toml_text(table: dict[str, Any]) -> str:
    """TOML text of a table (None values dropped), deep markers expanded."""
    return DEEP.sub(_expander(1), tomli_w.dumps(_drop_none(table)))


def materialize(value: Any) -> Any:
    """The value with deep markers replaced by nested objects."""
    if isinstance(value, str) and (match := DEEP.fullmatch(f'"{value}"')):
        return nested(int(match.group(1)), match.group(2))
    if isinstance(value, dict):
        return {key: materialize(item) for key, item in value.items()}
    if isinstance(value, list):
        return [materialize(item) for item in value]
    return value


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value if v is not None]
    return value


# --- mutations of valid inputs --------------------------------------------------------------


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _parent(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        value = value[part]
    return value


@st.composite
def mutated(draw: st.DrawFn, base: Any, keys: tuple[str, ...] = (), values: Any = junk) -> Any:
    """`base` with up to 4 random edits: a value replaced by junk, a key or item dropped, a key
    (one of `keys`, or random) added, a container emptied or swapped for a scalar."""
    value = copy.deepcopy(base)
    for _ in range(draw(st.integers(0, 4))):
        path = draw(st.sampled_from(_paths(value)))
        operation = draw(st.sampled_from(("replace", "replace", "drop", "add")))
        if not path:
            if operation == "replace":
                value = draw(values)
            elif operation == "add" and isinstance(value, dict):
                value[draw(st.sampled_from(keys) | texts if keys else texts)] = draw(values)
            continue
        parent, last = _parent(value, path), path[-1]
        if operation == "replace":
            parent[last] = draw(values)
        elif operation == "drop":
            del parent[last]
        elif isinstance(parent[last], dict):
            parent[last][draw(st.sampled_from(keys) | texts if keys else texts)] = draw(values)
        elif isinstance(parent[last], list):
            parent[last].append(draw(values))
    return value
