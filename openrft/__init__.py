"""openrft: self-hosted reinforcement fine-tuning (GRPO) of language models, from a laptop CPU
to a GPU, with Bedrock- and OpenAI-compatible graders. The `openrft` command line is the main
entry point (`openrft --help`); in Python, after `import openrft, pathlib`:

    config = openrft.load_config("job.toml", ["train.max_steps=20"])
    summary = openrft.train_rft(config, pathlib.Path("runs/job"))  # an openrft.RunSummary

The names below are the public API. They load on first use (PEP 562), so `import openrft`
imports neither torch nor transformers; each also stays importable from its home module.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("openrft")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0"

# Public name -> its home module ("module:attribute" where the names differ).
# The RL loop `openrft.train.loop.train` is exported as `train_rft`: a top-level name `train`
# would collide with the subpackage `openrft.train` (importing it rebinds `openrft.train`).
_EXPORTS = {
    # configuration
    "JobConfig": "openrft.config",
    "dump_config": "openrft.config",
    "load_config": "openrft.config",
    # training and evaluation
    "RunSummary": "openrft.train.loop",
    "train_rft": "openrft.train.loop:train",
    "train_sft": "openrft.train.sft",
    "EvalResult": "openrft.evaluation.evaluate",
    "evaluate": "openrft.evaluation.evaluate",
    # graders
    "Grader": "openrft.rewards",
    "build_grader": "openrft.rewards",
    # the objects that cross stage boundaries
    "Completion": "openrft.types",
    "Example": "openrft.types",
    "Grade": "openrft.types",
    "GradeError": "openrft.types",
    "RolloutGroup": "openrft.types",
    "Sample": "openrft.types",
    "SamplingParams": "openrft.types",
    "Segment": "openrft.types",
    "TrainRow": "openrft.types",
    # errors
    "CheckpointError": "openrft.errors",
    "ConfigError": "openrft.errors",
    "DatasetError": "openrft.errors",
    "GraderError": "openrft.errors",
    "ModelError": "openrft.errors",
    "RFTError": "openrft.errors",
    "RolloutError": "openrft.errors",
    "WeightSyncError": "openrft.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name's home module on first access, then cache the name here."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'openrft' has no attribute {name!r}")
    module_name, _, attribute = _EXPORTS[name].partition(":")
    value = getattr(importlib.import_module(module_name), attribute or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
