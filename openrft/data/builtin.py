"""`builtin:<name>/<split>` data specs: resolved to files prepared once into the cache.

Owns the spec syntax and the cache layout (`cache_dir()/data/<name>/{train,validation}.jsonl`);
the files themselves come from `prepare.prepare_dataset` with its default split and seed 0.
"""

from __future__ import annotations

from pathlib import Path

from openrft.data.prepare import DATASETS, prepare_dataset
from openrft.errors import ConfigError
from openrft.paths import cache_dir

PREFIX = "builtin:"
SPLITS: tuple[str, ...] = ("train", "validation")


def builtin_choices() -> list[str]:
    """Every valid `builtin:` spec, for error messages and help text."""
    return [f"{PREFIX}{name}/{split}" for name in DATASETS for split in SPLITS]


def resolve_data_path(spec: str, field: str = "data.train_file") -> Path:
    """A data file path: plain paths unchanged, `builtin:` specs prepared on first use."""
    if not spec.startswith(PREFIX):
        return Path(spec)
    name, _, split = spec.removeprefix(PREFIX).partition("/")
    if name not in DATASETS or split not in SPLITS:
        raise ConfigError(
            field, f"unknown built-in data set {spec!r}; choices: {', '.join(builtin_choices())}"
        )
    out_dir = cache_dir() / "data" / name
    # Both files must exist: prepare writes them one after the other, so a crash in between
    # leaves only train.jsonl, and the next call prepares again.
    if not all((out_dir / f"{s}.jsonl").is_file() for s in SPLITS):
        prepare_dataset(name, out_dir)
    return out_dir / f"{split}.jsonl"
