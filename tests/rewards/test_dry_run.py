"""`openrft grade`: grading given or sampled completions, the summary and the report."""

from __future__ import annotations

import json

import pytest

from openrft.cli import main
from openrft.errors import DatasetError
from openrft.rewards import build_grader, dry_run

ROWS = [
    {"id": "a", "messages": [{"role": "user", "content": "good?"}], "reference_answer": "positive"},
    {"id": "b", "messages": [{"role": "user", "content": "bad?"}], "reference_answer": "negative"},
]
COMPLETIONS = [
    ("a", "Positive."), ("a", "negative"), ("a", "I think it is positive"),
    ("b", "negative"), ("b", "Negative!"), ("b", "NEGATIVE"),
]  # fmt: skip


@pytest.fixture
def files(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    completions = tmp_path / "completions.jsonl"
    completions.write_text(
        "".join(json.dumps({"id": i, "completion": c}) + "\n" for i, c in COMPLETIONS)
    )
    return data, completions


def test_summary_matches_hand_computed_values(files):
    data, completions = files
    examples = {e.id: e for e in dry_run.load_data(data, None)}
    pairs = [(e, text, 0) for e, text in dry_run.read_completions(completions, examples)]
    graded = dry_run.grade_pairs(build_grader("exact_label"), pairs, batch_size=4)
    summary = dry_run.summarize(graded)
    # scores: a -> [1, 0, 0], b -> [1, 1, 1]; mean 4/6; only prompt b has one distinct score
    assert summary["mean"] == pytest.approx(4 / 6)
    assert summary["frac_prompts_same_score"] == 0.5
    assert summary["completions"] == 6 and summary["prompts"] == 2 and summary["error_rate"] == 0
    report = dry_run.format_report(graded, summary)
    assert "no GRPO signal): 50.0%" in report and "lowest-scoring" in report and "#" in report


def test_bad_completion_lines_are_named(tmp_path, files):
    data, _ = files
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "a", "completion": "x"}\nnot json\n{"id": "zzz", "completion": "y"}\n{"id": "a"}\n'
    )
    examples = {e.id: e for e in dry_run.load_data(data, None)}
    with pytest.raises(DatasetError) as error:
        dry_run.read_completions(bad, examples)
    lines = [(e.line, e.field) for e in error.value.errors]
    assert lines == [(2, ""), (3, "id"), (4, "completion")]


def test_errors_are_counted_by_kind_with_an_example(tmp_path, files):
    data, completions = files
    reward = tmp_path / "r.py"
    reward.write_text(
        "def reward(response, item):\n"
        "    if 'I think' in response:\n"
        "        raise ValueError('boom')\n"
        "    return 1.0\n"
    )
    output = tmp_path / "out.json"
    code = main(
        [
            "grade",
            "--grader",
            f"{reward}:reward",
            "--data",
            str(data),
            "--completions",
            str(completions),
            "--output",
            str(output),
        ]
    )
    assert code == 0
    result = json.loads(output.read_text())
    assert len(result["results"]) == 6
    failed = [r for r in result["results"] if r["error"]]
    assert (
        len(failed) == 1
        and failed[0]["error"]["kind"] == "runtime_error"
        and failed[0]["score"] is None
    )
    assert result["summary"]["errors"]["runtime_error"]["count"] == 1
    assert "boom" in result["summary"]["errors"]["runtime_error"]["example"]


def test_grade_with_sampled_completions(tmp_path, files, tiny_model_dir, capsys):
    data, _ = files
    code = main(
        [
            "grade",
            "--grader",
            "exact_label",
            "--data",
            str(data),
            "--model",
            str(tiny_model_dir),
            "--samples",
            "3",
            "--max-new-tokens",
            "4",
        ]
    )
    assert code == 0
    assert "6 completions of 2 prompts" in capsys.readouterr().out


def test_grader_validate_reports_field_errors(tmp_path, capsys):
    bad = tmp_path / "g.toml"
    bad.write_text('type = "regex"\npattern = "("\n')
    assert main(["grader", "validate", str(bad)]) == 1
    assert "pattern: not a valid regular expression" in capsys.readouterr().err


def test_a_prompt_with_one_completion_is_not_counted_as_a_group(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    examples = {e.id: e for e in dry_run.load_data(data, None)}
    pairs = [(examples["a"], "positive", 0), (examples["b"], "x", 0), (examples["b"], "y", 0)]
    summary = dry_run.summarize(dry_run.grade_pairs(build_grader("exact_label"), pairs, 4))
    assert summary["frac_prompts_same_score"] == 1.0  # only b is a group: both scored 0
    single = dry_run.summarize(dry_run.grade_pairs(build_grader("exact_label"), pairs[:1], 4))
    assert single["frac_prompts_same_score"] is None
