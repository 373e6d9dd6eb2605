"""Evaluation on the tiny model: counts, pass@k, errors, reports, adapters, comparisons and
the `openrft eval` command end to end (real generation, real graders, no mocks)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import peft
import pytest
import torch
from verifiers_env import TASKSETS, needs_verifiers

from openrft.algo.passk import mean_pass_at_k
from openrft.cli import main
from openrft.cli.evaluate import load_eval_model, parse_model_spec
from openrft.data import encode_prompt, load_examples
from openrft.evaluation.evaluate import compare, evaluate, write_comparison, write_report
from openrft.models.load import load_model
from openrft.rewards import build_grader
from openrft.rollout.hf_engine import HFEngine
from openrft.types import SamplingParams

REWARDS = '''
import zlib


def _hash(response):
    return zlib.crc32(response.encode())


def coin(response, item):
    """1 or 0 by the text's hash: random-ish per completion, fixed per text."""
    return float(_hash(response) % 2)


def spread(response, item):
    """A score in [0, 0.99] by the text's hash, and the length as a second component."""
    return {"score": (_hash(response) % 100) / 100, "length": float(len(response))}


def flaky(response, item):
    if _hash(response) % 3 == 0:
        raise ValueError("grader crashed on purpose")
    return 1.0


def always_one(response, item):
    return 1.0


def always_zero(response, item):
    return 0.0
'''
WORDS = ["great movie", "dull film", "what is 12 plus 30", "a weak plot", "the acting", "0 1 2"]
MAX_NEW = 8


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def write_files(root: Path) -> dict[str, Path]:
    """A six-prompt JSONL data set and a reward file under `root`."""
    data = root / "data.jsonl"
    rows = [
        {"id": f"p{i}", "messages": [{"role": "user", "content": w}], "reference_answer": "x"}
        for i, w in enumerate(WORDS)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rewards = root / "rewards.py"
    rewards.write_text(REWARDS)
    return {"data": data, "rewards": rewards}


def write_varied_model(tiny_model_dir: Path, path: Path) -> Path:
    """The tiny model with wider random weights: the default init repeats one token."""
    model, tokenizer = load_model(str(tiny_model_dir))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return write_files(tmp_path_factory.mktemp("eval-files"))


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return write_varied_model(tiny_model_dir, tmp_path_factory.mktemp("varied-model"))


@pytest.fixture(scope="module")
def run_dir(model_dir, tmp_path_factory) -> Path:
    """A run directory whose final/ holds a LoRA adapter with perturbed B weights."""
    model, _ = load_model(str(model_dir))
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    wrapped = peft.get_peft_model(model, config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_B" in name:  # zero at init: perturb so that the adapter changes outputs
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    run = tmp_path_factory.mktemp("run")
    wrapped.save_pretrained(run / "final")
    return run


def _evaluate(model_dir, files, grader, adapter=None, n=4, temperature=1.0, threshold=1.0):
    model, tokenizer, _ = load_eval_model(str(model_dir), adapter)
    examples = load_examples(files["data"])
    prompt_ids = [encode_prompt(e.messages, tokenizer) for e in examples]
    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=MAX_NEW, seed=3)
    grader = build_grader(f"{files['rewards']}:{grader}")
    return evaluate(HFEngine(model, tokenizer), examples, prompt_ids, params, grader, threshold)


def test_counts_pass_at_k_and_metrics_are_consistent(model_dir, files):
    result = _evaluate(model_dir, files, "coin", n=4)
    assert result.prompts == len(WORDS) and result.samples_per_prompt == 4
    assert all(len(p.completions) == 4 for p in result.per_prompt)
    assert result.completions == 4 * len(WORDS)
    assert sorted(result.pass_at_k) == [1, 2, 3, 4]
    values = [result.pass_at_k[k] for k in range(1, 5)]
    assert values == sorted(values)  # monotone non-decreasing in k
    assert result.pass_at_k[1] == pytest.approx(result.success_rate)
    assert 0 < result.success_rate < 1  # the coin reward splits completions
    for prompt in result.per_prompt:
        assert prompt.successes == sum(c.score == 1.0 for c in prompt.completions)
    assert result.mean_reward == pytest.approx(result.success_rate)  # 0/1 scores, no errors
    tokens = sum(c.tokens for p in result.per_prompt for c in p.completions)
    assert result.tokens_generated == tokens > 0
    assert result.error_counts == {} and result.components == {"coin": result.mean_reward}
    logged = result.log_metrics("val")
    for key in ("val/reward/mean", "val/reward/error_rate", "val/completion/length_mean"):
        assert key in logged
    assert logged["val/pass@k/1"] == result.pass_at_k[1]


def test_grading_errors_are_failures_and_counted(model_dir, files, tmp_path):
    result = _evaluate(model_dir, files, "flaky", n=4)
    errored = [c for p in result.per_prompt for c in p.completions if c.error is not None]
    assert errored, "the flaky grader should fail on some completions"
    assert result.error_counts == {"runtime_error": len(errored)}
    assert all(c.score is None and not c.success for c in errored)
    assert "grader crashed on purpose" in errored[0].error["message"]
    assert result.mean_reward == 1.0  # the graded ones all scored 1
    assert result.success_rate == pytest.approx(1 - len(errored) / result.completions)
    expected = mean_pass_at_k([p.successes for p in result.per_prompt], 4, [1, 2, 3, 4])
    assert result.pass_at_k == pytest.approx(expected)
    md = write_report(result, tmp_path / "flaky.json")
    text = md.read_text()
    assert "runtime_error" in text and "grader crashed on purpose" in text
    saved = json.loads((tmp_path / "flaky.json").read_text())
    assert saved["error_counts"] == {"runtime_error": len(errored)}


def test_success_threshold_and_components(model_dir, files, tmp_path):
    result = _evaluate(model_dir, files, "spread", n=3, threshold=0.5)
    scores = [c.score for p in result.per_prompt for c in p.completions]
    assert result.success_rate == pytest.approx(sum(s >= 0.5 for s in scores) / len(scores))
    assert set(result.components) == {"score", "length"}
    assert result.success_threshold == 0.5
    md = write_report(result, tmp_path / "r.json", tmp_path / "r.md")
    text = md.read_text()
    for part in ("## pass@k", "| 3 |", "score >= 0.5", "## Example completions", "length"):
        assert part in text
    saved = json.loads((tmp_path / "r.json").read_text())
    assert set(saved["pass_at_k"]) == {"1", "2", "3"} and len(saved["per_prompt"]) == len(WORDS)


def test_adapter_changes_results_and_compare_lists_differences(model_dir, run_dir, files, tmp_path):
    base = _evaluate(model_dir, files, "spread", n=2, temperature=0.0)
    tuned = _evaluate(model_dir, files, "spread", adapter=str(run_dir), n=2, temperature=0.0)
    base_texts = [c.text for p in base.per_prompt for c in p.completions]
    tuned_texts = [c.text for p in tuned.per_prompt for c in p.completions]
    assert base_texts != tuned_texts
    comparison = compare({"base": base, "tuned": tuned}, top=3)
    assert 1 <= len(comparison.differing) <= 3
    spreads = [d.spread for d in comparison.differing]
    assert spreads == sorted(spreads, reverse=True) and spreads[0] > 0
    top = comparison.differing[0]
    by_id = {p.example_id: p for p in base.per_prompt}
    assert top.mean_scores["base"] == by_id[top.example_id].mean_score
    paths = write_comparison(comparison, tmp_path / "cmp.json")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = paths["md"].read_text()
    assert "differ most" in text and top.example_id in text and "cmp.png" in text
    saved = json.loads(paths["json"].read_text())
    assert saved["labels"] == ["base", "tuned"] and saved["differing"]


def test_compare_needs_the_same_prompts(model_dir, files):
    result = _evaluate(model_dir, files, "coin", n=1, temperature=0.0)
    other = _evaluate(model_dir, files, "coin", n=1, temperature=0.0)
    other.per_prompt = other.per_prompt[1:]
    with pytest.raises(ValueError, match="other prompts"):
        compare({"a": result, "b": other})


def test_adapter_resolution(tiny_model_dir, model_dir, run_dir, tmp_path):
    _, _, final = load_eval_model(str(model_dir), str(run_dir))
    assert final == run_dir / "final"
    checkpoint = tmp_path / "checkpoints" / "step-2"
    shutil.copytree(run_dir / "final", checkpoint / "model")
    _, _, resolved = load_eval_model(str(model_dir), str(checkpoint))
    assert resolved == checkpoint / "model"
    # a full fine-tuning run's weights (config.json, no adapter_config.json) load whole
    full, _, resolved = load_eval_model(str(tiny_model_dir), str(model_dir))
    assert resolved == model_dir
    expected, _ = load_model(str(model_dir))
    assert torch.equal(full.lm_head.weight, expected.lm_head.weight)


def test_parse_model_spec(tmp_path):
    assert parse_model_spec("smollm2-135m-instruct") == ("smollm2-135m-instruct", None)
    assert parse_model_spec("smollm2-135m-instruct+runs/demo/final") == (
        "smollm2-135m-instruct",
        "runs/demo/final",
    )
    odd = tmp_path / "model+v2"
    odd.mkdir()
    assert parse_model_spec(str(odd)) == (str(odd), None)


def test_cli_eval_with_and_without_adapter(model_dir, run_dir, files, tmp_path, capsys):
    common = ["--data", str(files["data"]), "--grader", f"{files['rewards']}:spread"]
    common += ["--samples", "3", "--max-new-tokens", str(MAX_NEW), "--success-threshold", "0.5"]
    assert (
        main(["eval", "--model", str(model_dir), *common, "--output", str(tmp_path / "b.json")])
        == 0
    )
    out = capsys.readouterr().out
    for part in ("mean reward", "pass@1", "pass@3", "score >= 0.5", "tokens generated", "errors"):
        assert part in out
    args = ["eval", "--model", str(model_dir), "--adapter", str(run_dir), *common]
    assert main([*args, "--limit", "4", "--output", str(tmp_path / "t.json")]) == 0
    base = json.loads((tmp_path / "b.json").read_text())
    tuned = json.loads((tmp_path / "t.json").read_text())
    assert (tmp_path / "b.md").exists() and (tmp_path / "t.md").exists()
    assert len(base["per_prompt"]) == len(WORDS) and len(tuned["per_prompt"]) == 4
    assert tuned["info"]["adapter"] == str(run_dir / "final")
    assert base["sampling"]["temperature"] == 1.0  # the default with several samples
    texts = [[c["text"] for c in p["completions"]] for p in base["per_prompt"][:4]]
    assert texts != [[c["text"] for c in p["completions"]] for p in tuned["per_prompt"]]


def test_cli_compare(model_dir, run_dir, files, tmp_path, capsys):
    out = tmp_path / "cmp" / "compare.json"
    code = main(
        [
            "eval", "--compare", str(model_dir), f"{model_dir}+{run_dir / 'final'}",
            "--data", str(files["data"]), "--grader", f"{files['rewards']}:spread",
            "--max-new-tokens", str(MAX_NEW), "--output", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    saved = json.loads(out.read_text())
    assert saved["labels"] == [str(model_dir), f"{model_dir}+{run_dir / 'final'}"]
    assert saved["differing"] and out.with_suffix(".png").exists()
    assert "differ most" in out.with_suffix(".md").read_text()
    assert "pass@1" in capsys.readouterr().out


def test_cli_reports_bad_arguments(model_dir, files, tmp_path, capsys):
    common = ["--data", str(files["data"]), "--grader", "exact_label"]
    assert main(["eval", "--compare", str(model_dir), *common]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), "--adapter", str(tmp_path), *common]) == 1
    assert "--adapter" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), *common[:2], "--grader", "nope"]) == 1


def test_cli_eval_runs_episodes_with_an_environment(model_dir, files, tmp_path, capsys):
    """`--environment` makes each sample an episode; pass@k counts whole episodes and the
    report holds each one's turns."""
    env = tmp_path / "more_env.py"
    env.write_text(
        "class More:\n"
        "    def __init__(self):\n        self.turns = 0\n"
        "    def step(self, message):\n        self.turns += 1\n"
        "        return {'messages': [{'role': 'user', 'content': 'more'}], 'reward': 1.0,\n"
        "                'done': self.turns >= 2}\n"
        "def make_env(item):\n    return More()\n"
    )
    common = ["--data", str(files["data"]), "--grader", f"{files['rewards']}:spread"]
    out = tmp_path / "episodes.json"
    assert main([
        "eval", "--model", str(model_dir), *common, "--samples", "2",
        "--environment", f"{env}:make_env", "--max-turns", "3", "--env-reward", "turns",
        "--limit", "3", "--output", str(out),
        # common characters as stop strings: the random model's turns end within the cap
        "--stop", " ", "--stop", "e", "--stop", "a", "--max-new-tokens", "8",
    ]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert "pass@2" in capsys.readouterr().out
    finished = [c for p in result["per_prompt"] for c in p["completions"]]
    two_turns = [c for c in finished if c["finish_reason"] == "stop"]
    assert two_turns  # most turns end at a stop string, so most episodes run both turns
    for c in two_turns:
        assert c["episode"]["turns"] == 2 and c["score"] == 2.0
        assert c["episode"]["messages"][1] == {"role": "user", "content": "more"}
    assert result["metrics"]["episode/turns_mean"] >= 1


def test_cli_eval_runs_an_agent_whose_return_is_the_reward(model_dir, files, tmp_path, capsys):
    agent = tmp_path / "my_agent.py"
    agent.write_text(
        "def run(client, item):\n"
        "    reply = client.chat.completions.create(model='m', messages=item['messages'])\n"
        "    return {'score': 1.0, 'chars': float(len(reply.choices[0].message.content))}\n"
    )
    out = tmp_path / "agent.json"
    args = ["eval", "--model", str(model_dir), "--data", str(files["data"]), "--limit", "2"]
    assert main([*args, "--agent", f"{agent}:run", "--samples", "2", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["mean_reward"] == 1.0 and result["info"]["grader"] == f"agent {agent}:run"
    assert "reward/chars/mean" in result["metrics"]
    assert main([*args, "--agent", f"{agent}:run", "--grader", "exact_label"]) == 1
    assert "leave out --grader" in capsys.readouterr().err
    assert main(args) == 1
    assert "--grader is required" in capsys.readouterr().err


@needs_verifiers
def test_cli_eval_and_baseline_run_a_verifiers_taskset(model_dir, tmp_path, capsys):
    """--verifiers: the taskset's tasks are the prompts, its rewards the score."""
    taskset = ["--verifiers", str(TASKSETS / "tiny_vf")]
    options = ["--verifiers-args", '{"num_tasks": 5, "tools": false}', "--max-turns", "2"]
    out = tmp_path / "vf.json"
    assert main([
        "eval", "--model", str(model_dir), *taskset, *options, "--limit", "3",
        "--samples", "2", "--max-new-tokens", "6", "--output", str(out),
    ]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert len(result["per_prompt"]) == 3 and result["info"]["grader"].startswith("verifiers")
    assert result["per_prompt"][0]["example_id"] == "tiny_vf:0"
    assert "reward/correct/mean" in result["metrics"] and result["error_counts"] == {}
    assert main(["baseline", "--model", str(model_dir), *taskset, *options, "--prompts", "2",
                 "--samples", "2", "--max-new-tokens", "6"]) == 0  # fmt: skip
    assert "2 prompts" in capsys.readouterr().out
    assert main(["eval", "--model", str(model_dir), *taskset, "--verifiers-args", "[1]"]) == 1
    assert "must be a JSON object" in capsys.readouterr().err
