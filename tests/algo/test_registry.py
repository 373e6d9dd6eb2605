"""Checks of the name -> function tables: lookup errors, docstrings, per-turn ranks, the
by-name helpers, and that the algorithm modules never import the registry (no cycle)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch

import openrft.algo
from openrft.algo import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    SAMPLER_CORRECTIONS,
    AdvantageEstimator,
    lookup,
)

ALGO_DIR = Path(openrft.algo.__file__).parent
TABLES: dict[str, Mapping[str, object]] = {
    "advantage estimator": ADVANTAGE_ESTIMATORS,
    "policy loss": POLICY_LOSSES,
    "loss aggregation": LOSS_AGGREGATIONS,
    "KL estimator": KL_ESTIMATORS,
    "sampler correction": SAMPLER_CORRECTIONS,
}


def test_table_names() -> None:
    assert list(ADVANTAGE_ESTIMATORS) == [
        "grpo",
        "drgrpo",
        "rloo",
        "reinforce_pp",
        "reinforce_pp_baseline",
        "grpo_per_turn",
    ]
    assert list(POLICY_LOSSES) == ["ppo", "gspo", "cispo", "importance_sampling"]
    assert list(LOSS_AGGREGATIONS) == ["token_mean", "sequence_mean", "constant"]
    assert list(KL_ESTIMATORS) == ["k1", "k3"]
    assert list(SAMPLER_CORRECTIONS) == ["truncate", "mask", "off"]


@pytest.mark.parametrize("what", list(TABLES))
def test_unknown_name_lists_every_choice(what: str) -> None:
    table = TABLES[what]
    choices = ", ".join(table)
    message = f"unknown {what} 'nope'; choose one of: {choices}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        lookup(table, "nope", what)
    for name in table:
        assert lookup(table, name, what) is table[name]


def _registered_functions() -> dict[str, Callable[..., object]]:
    found: dict[str, Callable[..., object]] = {}
    for what, table in TABLES.items():
        for name, entry in table.items():
            found[f"{what}: {name}"] = entry.fn if isinstance(entry, AdvantageEstimator) else entry
    return found


REGISTERED = _registered_functions()


@pytest.mark.parametrize("label", list(REGISTERED))
def test_every_registered_function_has_a_docstring(label: str) -> None:
    doc = REGISTERED[label].__doc__
    assert doc is not None and doc.strip(), label


@pytest.mark.parametrize("name", list(ADVANTAGE_ESTIMATORS))
def test_per_turn_flag_matches_the_rank_accepted(name: str) -> None:
    estimator = ADVANTAGE_ESTIMATORS[name]
    assert estimator.reference
    # Per-turn: (P, G, K) = (1, 2, 1); per-episode: (P, G) = (1, 2). The other rank raises.
    rewards = torch.tensor([1.0, 0.0]).reshape((1, 2, 1) if estimator.per_turn else (1, 2))
    valid = torch.ones(rewards.shape, dtype=torch.bool)
    assert estimator.fn(rewards, valid, 1e-6).shape == rewards.shape
    wrong = rewards.squeeze(-1) if estimator.per_turn else rewards.unsqueeze(-1)
    with pytest.raises(ValueError, match="rewards must have shape"):
        estimator.fn(wrong, torch.ones(wrong.shape, dtype=torch.bool), 1e-6)


def test_algorithm_modules_do_not_import_the_registry() -> None:
    # openrft/algo/__init__.py imports the registry, so load the modules under a bare
    # `openrft.algo` package in a fresh interpreter and see what came with them.
    code = f"""
import sys, types
package = types.ModuleType("openrft.algo")
package.__path__ = [{str(ALGO_DIR)!r}]
sys.modules["openrft.algo"] = package
import openrft.algo.advantages, openrft.algo.losses, openrft.algo.shaping
assert "openrft.algo.registry" not in sys.modules, "registry imported"
import openrft.algo.registry
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# The algorithm math imports only these (logprobs.py also uses contextlib's contextmanager).
ALLOWED_IMPORTS = {"__future__", "torch", "math", "typing", "dataclasses", "collections.abc"}
ALLOWED_IMPORTS |= {"contextlib"}


@pytest.mark.parametrize("path", sorted(ALGO_DIR.glob("*.py")), ids=lambda path: path.name)
def test_algo_imports_only_torch_and_the_standard_math(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        else:
            continue
        for module in modules:
            own = module == "openrft.algo" or module.startswith("openrft.algo.")
            assert own or module in ALLOWED_IMPORTS, f"{path.name} imports {module}"
