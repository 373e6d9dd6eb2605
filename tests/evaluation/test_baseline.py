"""The Step-0 baseline: advice on crafted rewards with the tiny model, thresholds, errors,
`openrft baseline` end to end, and one run on SmolLM2-135M with SST-2 (real_model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openrft.cli import main
from openrft.data import encode_prompt, load_examples
from openrft.errors import GraderError
from openrft.evaluation.baseline import BaselineResult, advise, baseline
from openrft.models.load import load_model
from openrft.rewards import build_grader
from openrft.rollout.hf_engine import HFEngine
from openrft.types import SamplingParams

from .test_evaluate import REWARDS, WORDS, write_files, write_varied_model

EXTRA_REWARDS = """

def always_raise(response, item):
    raise RuntimeError("broken grader")
"""


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    paths = write_files(tmp_path_factory.mktemp("baseline-files"))
    paths["rewards"].write_text(REWARDS + EXTRA_REWARDS)
    return paths


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory, files):
    """The varied tiny model's directory, an engine on it and the tokenised prompts."""
    path = write_varied_model(tiny_model_dir, tmp_path_factory.mktemp("baseline-model"))
    model, tokenizer = load_model(str(path))
    examples = load_examples(files["data"])
    prompt_ids = [encode_prompt(e.messages, tokenizer) for e in examples]
    return path, HFEngine(model, tokenizer), examples, prompt_ids


def _baseline(setup, files, reward: str, **thresholds) -> BaselineResult:
    _, engine, examples, prompt_ids = setup
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=0)
    grader = build_grader(f"{files['rewards']}:{reward}")
    return baseline(engine, examples, prompt_ids, params, grader, **thresholds)


def test_always_one_means_rft_unnecessary(setup, files):
    result = _baseline(setup, files, "always_one")
    assert result.advice == "rft_unnecessary" and result.mean_reward == 1.0
    assert result.all_succeed_share == 1.0 and result.mixed_share == 0.0
    assert "RFT unnecessary" in result.message


def test_always_zero_means_sft_first(setup, files):
    result = _baseline(setup, files, "always_zero")
    assert result.advice == "sft_first" and result.mean_reward == 0.0
    assert result.all_fail_share == 1.0 and result.success_rate == 0.0
    assert "SFT first" in result.message


def test_random_rewards_mean_go_with_the_signal_share(setup, files):
    result = _baseline(setup, files, "coin")
    assert result.advice == "go"
    assert result.prompts == len(WORDS) and result.samples_per_prompt == 4
    assert result.all_fail_share + result.all_succeed_share + result.mixed_share == (
        pytest.approx(1.0)
    )
    assert result.mixed_share > 0 and result.signal_share == pytest.approx(result.mixed_share)
    mixed = round(result.mixed_share * len(WORDS))
    assert f"({mixed} of {len(WORDS)})" in result.message and "Go" in result.message
    assert result.pass_at_k[1] == pytest.approx(result.success_rate)
    # the thresholds are parameters: lowered, the same samples call for no RFT
    strict = advise(result.evaluation, rft_unnecessary_above=0.1)
    assert strict.advice == "rft_unnecessary"
    assert advise(result.evaluation, sft_first_all_fail_share=0.0).advice == "sft_first"


def test_partial_credit_below_the_threshold_is_pointed_out(setup, files):
    # "spread" scores lie in [0, 1): none reaches the default threshold of 1
    _, engine, examples, prompt_ids = setup
    result = _baseline(setup, files, "spread")
    assert result.advice == "sft_first" and result.signal_share > 0
    assert "lower the success threshold" in result.message
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=0)
    grader = build_grader(f"{files['rewards']}:spread")
    lenient = baseline(engine, examples, prompt_ids, params, grader, success_threshold=0.3)
    assert lenient.advice == "go"


def test_grading_errors_warn_and_all_errors_raise(setup, files):
    flaky = _baseline(setup, files, "flaky")
    assert flaky.error_counts["runtime_error"] > 0 and "failed grading" in flaky.message
    with pytest.raises(GraderError, match="every one of the 24 samples failed grading"):
        _baseline(setup, files, "always_raise")


def test_cli_baseline(setup, files, tmp_path, capsys):
    model_dir = setup[0]
    out = tmp_path / "baseline.json"
    args = ["baseline", "--model", str(model_dir), "--data", str(files["data"])]
    args += ["--grader", f"{files['rewards']}:coin", "--samples", "4", "--prompts", "4"]
    assert main([*args, "--max-new-tokens", "8", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "advice: go" in printed and "samples differ" in printed
    saved = json.loads(out.read_text())
    assert saved["advice"] == "go" and saved["prompts"] == 4 and saved["samples_per_prompt"] == 4
    assert saved["evaluation"]["sampling"]["temperature"] == 1.0
    assert saved["evaluation"]["info"]["data"] == str(files["data"])
    failing = ["baseline", "--model", str(model_dir), "--data", str(files["data"])]
    failing += ["--grader", f"{files['rewards']}:always_raise", "--max-new-tokens", "4"]
    assert main(failing) == 1
    assert "failed grading" in capsys.readouterr().err


@pytest.mark.real_model
def test_baseline_on_smollm2_with_sst2(tmp_path, capsys):
    out = tmp_path / "baseline.json"
    code = main(
        [
            "baseline", "--model", "smollm2-135m-instruct", "--data", "builtin:sst2/validation",
            "--grader", "exact_label", "--samples", "4", "--prompts", "4",
            "--max-new-tokens", "8", "--output", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["prompts"] == 4 and saved["samples_per_prompt"] == 4
    assert saved["advice"] in {"rft_unnecessary", "sft_first", "go"}
    assert f"advice: {saved['advice']}" in printed and saved["message"] in printed
    assert 0.0 <= saved["mean_reward"] <= 1.0 and saved["error_counts"] == {}
    shares = saved["all_fail_share"] + saved["all_succeed_share"] + saved["mixed_share"]
    assert shares == pytest.approx(1.0)
    assert set(saved["pass_at_k"]) == {"1", "2", "3", "4"}
    assert saved["evaluation"]["tokens_generated"] > 0
    assert saved["thresholds"] == {"rft_unnecessary_above": 0.95, "sft_first_all_fail_share": 0.95}
