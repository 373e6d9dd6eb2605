"""Fuzzing the TOML job config (openrft.config, openrft.config_parse): any file and any
`section.key=value` override gives a JobConfig or a ConfigError naming the field; a config
that loads is written and read back unchanged."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openrft.config import JobConfig, config_to_dict, dump_config, load_config
from openrft.errors import ConfigError

from ._fuzz import NASTY_TEXT, depths, fuzz, junk, mutated, texts, toml_text

BASE: dict[str, Any] = {
    "name": "fuzz",
    "model": {"name": "smollm2-135m-instruct", "dtype": "float32", "device": "cpu"},
    "lora": {"rank": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
    "data": {"train_file": "builtin:sst2/train", "validation_size": 10},
    "rollout": {"samples_per_prompt": 4, "temperature": 0.7, "stop": ["\n\n"]},
    "reward": {"grader": {"type": "regex", "pattern": "x"}, "error_score": 0.0},
    "algo": {"advantage": "grpo", "kl_coef": 0.01, "advantage_scaling": "group"},
    "train": {"learning_rate": 1e-5, "seed": 1, "lr_schedule": "cosine"},
    "eval": {"interval": 5},
    "checkpoint": {"keep_best": 1, "final": "best"},
    "env": {"tool_endpoints": {"add": "http://127.0.0.1:9/add"}, "verifiers_args": {"n": 1}},
    "cluster": {"backend": "local"},
    "tracking": {"backends": ["tensorboard"]},
    "hyperParameters": {"epochCount": 2, "learningRate": 1e-5, "inferenceMaxTokens": 32},
}
SECTIONS = tuple(f.name for f in dataclasses.fields(JobConfig))
DOTTED = tuple(
    f"{section}.{key}" if isinstance(value, dict) else section
    for section, value in config_to_dict(JobConfig()).items()
    for key in (value if isinstance(value, dict) else [None])
)
KEYS = tuple({part for name in DOTTED for part in name.split(".")}) + ("hyperParameters",)
# TOML holds no null; it holds dates, which JSON does not.
toml_junk = st.one_of(
    junk,
    st.datetimes(min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 1, 1)),
    st.dates(),
    st.sampled_from(("grpo", "ray", "vllm", "auto", "cuda:1", "http://x", "builtin:x")),
)
configs = st.one_of(
    mutated(BASE, KEYS, toml_junk),
    st.dictionaries(st.sampled_from(KEYS) | texts, toml_junk, max_size=4),
)


def _text(raw: Any) -> str:
    try:
        return toml_text(raw if isinstance(raw, dict) else {"name": raw})
    except (TypeError, ValueError):  # a value TOML cannot hold (tomli_w refuses it)
        return "name = 1"


files = st.one_of(
    configs.map(_text),
    texts,
    depths.map(lambda n: "train = " + "[" * n + "]" * n),
    depths.map(lambda n: "x = " + "{a = " * n + "1" + "}" * n),
)
overrides = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(DOTTED + ("hyperParameters.epochCount", "nope.x", "")),
            st.sampled_from(("=", "=", " = ", ":")),
        ),  # fmt: skip
        st.tuples(texts, st.just("=")),
    ).flatmap(
        lambda pair: st.one_of(
            texts,
            st.sampled_from(
                NASTY_TEXT
                + (
                    "1",
                    "1.5",
                    "true",
                    "[1, 2]",
                    "{a = 1}",
                    "nan",
                    "inf",
                    "1979-05-27",
                    "'x'",
                    "1\nx = 2",
                    "[[[",
                )
            ),  # fmt: skip
            depths.map(lambda n: "[" * n + "]" * n),
        ).map(lambda value: f"{pair[0]}{pair[1]}{value}")
    ),
    max_size=3,
)


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-config")


def _check_error(exc: ConfigError, text: str, items: list[str]) -> None:
    assert type(exc) is ConfigError
    assert str(exc).startswith(f"config field '{exc.field}': "), exc  # '' for a key ""
    head = exc.field.split(".")[0].split("[")[0]
    named = head in (*SECTIONS, "hyperParameters", "<file>", "<root>") or head[:1] in "'\""
    assert named or head in text or any(exc.field in item for item in items), exc


def _round_trip(config: JobConfig, path: Path) -> None:
    dump_config(config, path)
    assert repr(load_config(path)) == repr(config)  # repr: NaN equals itself there


@fuzz(700)
@given(text=files, as_bytes=st.binary(max_size=6))
def test_config_file_loads_or_names_the_field(config_dir: Path, text: str, as_bytes: bytes) -> None:
    path = config_dir / "job.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass") + as_bytes)
    try:
        config = load_config(path)
    except ConfigError as exc:
        _check_error(exc, text, [])
        return
    _round_trip(config, config_dir / "dumped.toml")


@fuzz(400)
@given(items=overrides)
def test_overrides_apply_or_name_the_field(config_dir: Path, items: list[str]) -> None:
    try:
        config = load_config(None, items)
    except ConfigError as exc:
        _check_error(exc, "", items)
        return
    _round_trip(config, config_dir / "dumped.toml")
