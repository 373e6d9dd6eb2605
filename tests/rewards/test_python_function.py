"""PythonFunctionGrader: loading references, return values, exceptions, timeouts, async."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from openrft.errors import GraderError
from openrft.rewards import PythonFunctionGrader
from openrft.types import Grade

from ._samples import make_sample


@pytest.fixture(params=["process", "thread"])
def isolation(request: pytest.FixtureRequest) -> str:
    """Both ways of running the function: a worker process (the default) and a thread."""
    return request.param


def write_reward(folder: Path, source: str, filename: str = "reward.py") -> Path:
    path = folder / filename
    path.write_text(textwrap.dedent(source))
    return path


# (id, function source, expected score or None, expected components, error kind, fragment)
RETURN_CASES = [
    ("float", "return 0.75", 0.75, {"reward": 0.75}, None, ""),
    ("int", "return 2", 2.0, {"reward": 2.0}, None, ""),
    ("bool", "return response == 'yes'", 1.0, {"reward": 1.0}, None, ""),
    ("dict_sum", "return {'correct': 1.0, 'format': 0.25}", 1.25,
     {"correct": 1.0, "format": 0.25}, None, ""),
    ("dict_score", "return {'score': 0.5, 'length': 3}", 0.5,
     {"score": 0.5, "length": 3.0}, None, ""),
    ("nan", "return float('nan')", None, {}, "invalid_output", "finite"),
    ("inf", "return float('inf')", None, {}, "invalid_output", "finite"),
    ("string", "return '1.0'", None, {}, "invalid_output", "str '1.0'"),
    ("none", "return None", None, {}, "invalid_output", "NoneType"),
    ("empty_dict", "return {}", None, {}, "invalid_output", "empty dict"),
    ("dict_bad_value", "return {'a': 1.0, 'b': [2]}", None, {}, "invalid_output", "'b'"),
    ("raises", "return 1 / 0", None, {}, "runtime_error", "ZeroDivisionError: division by zero"),
    ("exits", "raise SystemExit(3)", None, {}, "runtime_error", "SystemExit: 3"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "score", "components", "kind", "fragment"),
    [case[1:] for case in RETURN_CASES],
    ids=[case[0] for case in RETURN_CASES],
)
def test_return_values_and_exceptions(
    tmp_path: Path,
    body: str,
    score: float | None,
    components: dict[str, float],
    kind: str | None,
    fragment: str,
    isolation: str,
) -> None:
    path = write_reward(tmp_path, f"def reward(response, item):\n    {body}\n")
    grader = PythonFunctionGrader(f"{path}:reward", isolation=isolation)
    assert grader.name == "reward"
    [grade] = grader.grade([make_sample("yes", reference="yes")])
    assert grade.score == score
    assert dict(grade.components) == components
    assert grade.latency_s >= 0.0
    if kind is None:
        assert grade.error is None
    else:
        assert grade.error is not None and grade.error.kind == kind
        assert fragment in grade.error.message


def test_exception_message_names_the_raising_line(tmp_path: Path) -> None:
    path = write_reward(
        tmp_path,
        """
        def helper(item):
            return item["missing"]

        def reward(response, item):
            return helper(item)
        """,
    )
    [grade] = PythonFunctionGrader(f"{path}:reward").grade([make_sample("x")])
    assert grade.error is not None
    assert grade.error.message == "KeyError: 'missing' (at reward.py:3)"


def test_item_holds_every_dataset_field(tmp_path: Path) -> None:
    path = write_reward(
        tmp_path,
        """
        def reward(response, item):
            assert item["id"] == "row-7"
            assert item["messages"] == [{"role": "user", "content": "What is the answer?"}]
            assert item["reference_answer"] == "42"
            assert item["difficulty"] == "hard" and item["tags"] == ["a", "b"]
            return {"correct": float(response.strip() == item["reference_answer"])}
        """,
    )
    sample = make_sample(" 42 ", "42", {"difficulty": "hard", "tags": ["a", "b"]}, "row-7")
    [grade] = PythonFunctionGrader(f"{path}:reward").grade([sample])
    assert grade == Grade(1.0, {"correct": 1.0}, latency_s=grade.latency_s)


def test_a_slow_call_times_out_alone(tmp_path: Path, isolation: str) -> None:
    path = write_reward(
        tmp_path,
        """
        import time

        def reward(response, item):
            if response == "slow":
                time.sleep(3)
            return len(response)
        """,
    )
    grader = PythonFunctionGrader(f"{path}:reward", timeout_s=0.5, isolation=isolation)
    samples = [make_sample(text, index=i) for i, text in enumerate(["ab", "slow", "abcd"])]
    start = time.perf_counter()
    grades = grader.grade(samples)
    assert time.perf_counter() - start < 1.5
    assert [g.score for g in grades] == [2.0, None, 4.0]
    assert grades[1].error is not None and grades[1].error.kind == "timeout"
    assert "within 0.5 s on sample ex-1:1" in grades[1].error.message
    assert 0.45 <= grades[1].latency_s < 1.5


def test_async_functions_are_awaited(tmp_path: Path, isolation: str) -> None:
    path = write_reward(
        tmp_path,
        """
        import asyncio

        async def reward(response, item):
            await asyncio.sleep(0.01)
            if response == "boom":
                raise ValueError("bad response")
            if response == "slow":
                await asyncio.sleep(3)
            return {"score": 1.0, "chars": len(response)}
        """,
    )
    grader = PythonFunctionGrader(f"{path}:reward", timeout_s=0.5, isolation=isolation)
    grades = grader.grade([make_sample(r, index=i) for i, r in enumerate(["ok", "boom", "slow"])])
    assert grades[0].score == 1.0 and dict(grades[0].components) == {"score": 1.0, "chars": 2.0}
    assert grades[1].error is not None and grades[1].error.kind == "runtime_error"
    assert "ValueError: bad response" in grades[1].error.message
    assert grades[2].error is not None and grades[2].error.kind == "timeout"


def test_module_function_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "rft_test_rewards_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    write_reward(package, "def length_reward(response, item):\n    return len(response) / 10\n",
                 "scoring.py")  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    grader = PythonFunctionGrader("rft_test_rewards_pkg.scoring:length_reward")
    assert grader.name == "length_reward"
    assert grader.grade([make_sample("12345")])[0].score == 0.5


def test_file_reference_can_import_sibling_helpers(tmp_path: Path) -> None:
    write_reward(tmp_path, "WEIGHT = 3.0\n", "rft_test_weights.py")
    path = write_reward(
        tmp_path,
        "from rft_test_weights import WEIGHT\n\ndef reward(response, item):\n    return WEIGHT\n",
    )
    assert PythonFunctionGrader(f"{path}:reward").grade([make_sample("x")])[0].score == 3.0


def test_callable_objects_and_dotted_attributes(tmp_path: Path) -> None:
    path = write_reward(
        tmp_path,
        """
        class Scorer:
            @staticmethod
            def score(response, item):
                return 0.25

        class Callable:
            def __call__(self, response, item):
                return 0.5

        scorer = Callable()
        """,
    )
    assert PythonFunctionGrader(f"{path}:Scorer.score").grade([make_sample("x")])[0].score == 0.25
    assert PythonFunctionGrader(f"{path}:scorer").grade([make_sample("x")])[0].score == 0.5


BAD_REFERENCES = [
    ("no_colon", "reward.py", "expected 'path/to/file.py:function'"),
    ("empty_function", "{tmp}/ok.py:", "expected 'path/to/file.py:function'"),
    ("empty_target", ":reward", "expected 'path/to/file.py:function'"),
    ("missing_file", "{tmp}/nope.py:reward", "file not found"),
    ("syntax_error", "{tmp}/syntax.py:reward", "SyntaxError"),
    ("import_error", "{tmp}/imports.py:reward", "ModuleNotFoundError"),
    ("missing_attribute", "{tmp}/ok.py:other", "has no attribute 'other'"),
    ("not_callable", "{tmp}/ok.py:THRESHOLD", "is a float, not a function"),
    ("missing_module", "rft_no_such_module_xyz:reward", "no module named 'rft_no_such_module_xyz'"),
]


@pytest.mark.parametrize(
    ("reference", "fragment"),
    [case[1:] for case in BAD_REFERENCES],
    ids=[case[0] for case in BAD_REFERENCES],
)
def test_bad_references_raise_grader_error(tmp_path: Path, reference: str, fragment: str) -> None:
    write_reward(
        tmp_path, "THRESHOLD = 0.5\n\ndef reward(response, item):\n    return 1.0\n", "ok.py"
    )
    write_reward(tmp_path, "def reward(response, item)\n    return 1.0\n", "syntax.py")
    write_reward(tmp_path, "import rft_missing_dependency_xyz\n", "imports.py")
    reference = reference.format(tmp=tmp_path)
    with pytest.raises(GraderError) as caught:
        PythonFunctionGrader(reference)
    assert fragment in str(caught.value)
    assert repr(reference) in str(caught.value)


@pytest.mark.parametrize("timeout_s", [0.0, -1.0, float("nan")])
def test_timeout_must_be_positive(tmp_path: Path, timeout_s: float) -> None:
    path = write_reward(tmp_path, "def reward(response, item):\n    return 1.0\n")
    with pytest.raises(GraderError, match="timeout_s must be > 0"):
        PythonFunctionGrader(f"{path}:reward", timeout_s=timeout_s)


def test_huge_and_unicode_responses_reach_the_function(tmp_path: Path) -> None:
    path = write_reward(tmp_path, "def reward(response, item):\n    return len(response)\n")
    grader = PythonFunctionGrader(f"{path}:reward")
    grades = grader.grade([make_sample("x" * 1_000_000), make_sample("", index=1),
                           make_sample("naïve ١٨ 😀", index=2)])  # fmt: skip
    assert [g.score for g in grades] == [1_000_000.0, 0.0, 10.0]


def test_an_infinite_timeout_waits(tmp_path: Path) -> None:
    path = write_reward(tmp_path, "def reward(response, item):\n    return 1.0\n")
    grader = PythonFunctionGrader(f"{path}:reward", timeout_s=float("inf"))
    assert grader.grade([make_sample("x")])[0].score == 1.0


# --- call forms: OpenAI's grade(sample, item) and the batch forms ------------------------------


def test_openai_grade_form_gets_the_openai_sample(tmp_path: Path) -> None:
    path = write_reward(
        tmp_path,
        """
        def grade(sample, item):
            answer = (sample["output_json"] or {}).get("answer")
            text_ok = sample["choices"][0]["message"]["content"] == sample["output_text"]
            return float(answer == item["reference_answer"] and text_ok)
        """,
    )
    grader = PythonFunctionGrader(f"{path}:grade")
    assert (grader.form, grader.batched) == ("openai", False)
    grades = grader.grade(
        [
            make_sample('{"answer": "42"}', reference="42"),
            make_sample('{"answer": "41"}', reference="42", index=1),
            make_sample("not json", reference="42", index=2),
        ]
    )
    assert [g.score for g in grades] == [1.0, 0.0, 0.0]


def test_batch_form_is_called_once_per_batch(tmp_path: Path) -> None:
    path = write_reward(
        tmp_path,
        """
        from pathlib import Path

        def reward(responses, items):  # logs each call's batch size: it runs in a worker
            with Path(__file__).with_name("calls.log").open("a") as log:
                log.write(f"{len(responses)},")
            best = max(len(r) for r in responses)
            return [{"longest": float(len(r) == best), "matches": float(r == i["reference_answer"])}
                    for r, i in zip(responses, items)]

        def grade(samples, items):
            pairs = zip(samples, items)
            return [float(s["output_text"] == i["reference_answer"]) for s, i in pairs]
        """,
    )
    grader = PythonFunctionGrader(f"{path}:reward")
    assert (grader.form, grader.batched) == ("response", True)
    samples = [
        make_sample(text, reference="yes", index=i) for i, text in enumerate(["yes", "nope"])
    ]
    grades = grader.grade(samples)
    assert [g.score for g in grades] == [1.0, 1.0]
    assert [g.components for g in grades] == [
        {"longest": 0.0, "matches": 1.0},
        {"longest": 1.0, "matches": 0.0},
    ]
    assert (tmp_path / "calls.log").read_text() == "2,"
    openai_batch = PythonFunctionGrader(f"{path}:grade")
    assert (openai_batch.form, openai_batch.batched) == ("openai", True)
    assert [g.score for g in openai_batch.grade(samples)] == [1.0, 0.0]
    assert openai_batch.grade([]) == []


@pytest.mark.parametrize(
    ("body", "kind", "fragment"),
    [
        ("return [1.0]", "invalid_output", "a list of 2 results (one per sample), got 1 results"),
        ("return 1.0", "invalid_output", "got 1.0"),
        ("return [1.0, float('nan')]", None, ""),
        ("raise RuntimeError('judge down')", "runtime_error", "RuntimeError: judge down"),
    ],
)
def test_a_bad_batch_result_fails_the_batch(
    tmp_path: Path, body, kind, fragment, isolation: str
) -> None:
    path = write_reward(tmp_path, f"def reward(responses, items):\n    {body}\n")
    grades = PythonFunctionGrader(f"{path}:reward", isolation=isolation).grade(
        [make_sample("a"), make_sample("b", index=1)]
    )
    if kind is None:  # a per-sample NaN fails that sample only
        assert grades[0].score == 1.0 and grades[1].error.kind == "invalid_output"
        return
    assert all(g.error is not None and g.error.kind == kind for g in grades)
    assert fragment in grades[0].error.message


def test_a_hanging_batch_times_out_with_the_batch_budget(tmp_path: Path, isolation: str) -> None:
    path = write_reward(
        tmp_path, "import time\ndef reward(responses, items):\n    time.sleep(30)\n"
    )
    started = time.monotonic()
    grades = PythonFunctionGrader(f"{path}:reward", timeout_s=0.2, isolation=isolation).grade(
        [make_sample("a"), make_sample("b", index=1)]
    )
    assert time.monotonic() - started < 10
    assert [g.error.kind for g in grades] == ["timeout", "timeout"]
    assert "within 0.4 s for a batch of 2" in grades[0].error.message
