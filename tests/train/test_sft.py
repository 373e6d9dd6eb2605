"""SFT on the tiny model: memorization, run outputs, exact gradient accumulation, exact resume
after SIGKILL and after a stop request, --from-reference through the CLI, and chaining an RFT
run from the SFT adapter with model.init_from."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from openrft.cli import main
from openrft.config import JobConfig, load_config
from openrft.data import encode_prompt
from openrft.errors import CheckpointError, ConfigError
from openrft.train.loop import train
from openrft.train.policy import build_policy
from openrft.train.sft import SFTOptions, read_options, train_sft

from .helpers import config_file, tiny_job

ANSWERS = ["great movie", "dull film", "the answer is 42", "wonderful acting"]
COMPARED = ["loss/total", "optim/grad_norm", "optim/lr", "train/tokens", "val/loss"]


def write_sft_dataset(directory: Path, rows: int = 4) -> Path:
    path = directory / "sft.jsonl"
    with path.open("w") as f:
        for i in range(rows):
            messages = [
                {"role": "user", "content": f"review {i}"},
                {"role": "assistant", "content": ANSWERS[i % len(ANSWERS)]},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def sft_job(tmp_path: Path, model_dir: Path, *overrides: str, rows: int = 4) -> JobConfig:
    data = write_sft_dataset(tmp_path, rows)
    return load_config(
        None,
        [
            f'model.name="{model_dir}"',
            f'data.train_file="{data}"',
            f'data.validation_file="{data}"',
            "train.prompts_per_step=4",
            "train.micro_batch_size=2",
            "train.max_steps=4",
            "train.learning_rate=1e-2",
            "train.threads=1",
            "eval.interval=2",
            "checkpoint.interval=2",
            *overrides,
        ],
    )


def metrics_by_step(run_dir: Path) -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {m["step"]: m for m in map(json.loads, lines)}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_full_fine_tuning_memorizes_a_tiny_data_set(tmp_path, tiny_model_dir):
    config = sft_job(
        tmp_path, tiny_model_dir, "lora.enabled=false", "train.learning_rate=3e-3",
        "train.max_steps=20", "eval.interval=0",
    )  # fmt: skip
    summary = train_sft(config, tmp_path / "run", show_progress=False)
    losses = [m["loss/total"] for m in metrics_by_step(tmp_path / "run").values() if m["step"]]
    assert len(losses) == 20
    assert losses[-1] < 0.4 * losses[0]
    assert summary.val_after < 0.4 * summary.val_before

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "final")
    for i, answer in enumerate(ANSWERS):
        prompt = encode_prompt([{"role": "user", "content": f"review {i}"}], tokenizer)
        ids = torch.tensor([prompt])
        out = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)
        assert tokenizer.decode(out[0, ids.shape[1] :]) == f"{answer}<|im_end|>"  # stops, too


def test_lora_run_writes_the_rl_run_layout(tmp_path, tiny_model_dir):
    config = sft_job(tmp_path, tiny_model_dir, "train.max_steps=5", "checkpoint.keep_last=2")
    run_dir = tmp_path / "run"
    summary = train_sft(config, run_dir, show_progress=False)
    metrics = metrics_by_step(run_dir)
    assert sorted(metrics) == [0, 1, 2, 3, 4, 5]
    assert set(metrics[0]) == {"step", "epoch", "val/loss", "val/tokens"}
    for key in ["loss/total", "optim/grad_norm", "optim/lr", "train/tokens", "time/step_s",
                "memory/peak_rss_gb", "epoch", "step"]:  # fmt: skip
        assert metrics[1][key] is not None, key
    assert [s for s, m in metrics.items() if "val/loss" in m] == [0, 2, 4, 5]
    assert metrics[1]["epoch"] == 1.0 and metrics[1]["train/tokens"] > 0
    assert summary.val_before == metrics[0]["val/loss"]
    assert summary.val_after == metrics[5]["val/loss"]
    assert summary.status == "completed" and summary.steps == 5

    assert (run_dir / "final" / "adapter_model.safetensors").exists()
    assert (run_dir / "final" / "tokenizer.json").exists()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-4", "step-5"]
    assert load_config(run_dir / "config.toml") == config
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["kind"] == "sft" and saved["val_after"] == summary.val_after
    assert json.loads((run_dir / "status.json").read_text())["stage"] == "completed"
    report = (run_dir / "report.md").read_text()
    assert "validation loss before" in report and "![" in report
    assert (run_dir / "loss.png").exists() and (run_dir / "val_loss.png").exists()
    with pytest.raises(CheckpointError, match="finished already"):
        train_sft(config, run_dir, resume=True, show_progress=False)


def test_gradient_accumulation_gives_the_full_batch_step(tmp_path, tiny_model_dir):
    results = []
    for micro in (1, 4):
        config = sft_job(tmp_path, tiny_model_dir, f"train.micro_batch_size={micro}")
        train_sft(config, tmp_path / f"micro-{micro}", show_progress=False)
        results.append(metrics_by_step(tmp_path / f"micro-{micro}"))
    for step in range(1, 5):
        for key in ("loss/total", "optim/grad_norm", "val/loss"):
            if key in results[0][step]:
                assert results[0][step][key] == pytest.approx(results[1][step][key], rel=1e-4)


def test_validation_split_needs_enough_rows(tmp_path, tiny_model_dir):
    data = write_sft_dataset(tmp_path, rows=3)
    config = load_config(
        None,
        [f'model.name="{tiny_model_dir}"', f'data.train_file="{data}"', "data.validation_size=3"],
    )
    with pytest.raises(ConfigError, match="data.validation_size"):
        train_sft(config, tmp_path / "run", show_progress=False)


def test_killed_run_resumes_exactly(tmp_path, tiny_model_dir):
    config = sft_job(
        tmp_path, tiny_model_dir, "train.prompts_per_step=16", "train.micro_batch_size=1",
        "train.max_steps=6", "eval.interval=3", "checkpoint.interval=2", rows=12,
    )  # fmt: skip
    reference_dir = tmp_path / "uninterrupted"
    train_sft(config, reference_dir, show_progress=False)

    killed_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "openrft.cli", "sft", str(config_file(tmp_path, config)),
               "--output", str(killed_dir), "--no-progress"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (killed_dir / "checkpoints" / "step-2" / "state.json").exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "final").exists(), "the run finished before it was killed"

    resumed = subprocess.run(
        [*command[:4], "--resume", str(killed_dir), "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "validation loss: before" in resumed.stdout
    expected, got = metrics_by_step(reference_dir), metrics_by_step(killed_dir)
    assert sorted(got) == list(range(7))  # no step logged twice, none missing
    for step in range(7):
        for key in COMPARED:
            assert got[step].get(key) == expected[step].get(key), (step, key)
    final = load_file(killed_dir / "final" / "adapter_model.safetensors")
    reference = load_file(reference_dir / "final" / "adapter_model.safetensors")
    assert all(torch.equal(final[k], reference[k]) for k in reference)


class StopAfter:
    """A stop request that is set once `steps` lines are in metrics.jsonl (step 0 included)."""

    def __init__(self, run_dir: Path, steps: int):
        self.path, self.steps = run_dir / "metrics.jsonl", steps

    def is_set(self) -> bool:
        return len(self.path.read_text().splitlines()) > self.steps


def test_stop_request_checkpoints_and_resumes_exactly(tmp_path, tiny_model_dir):
    config = sft_job(tmp_path, tiny_model_dir, "checkpoint.interval=100", "eval.interval=0")
    reference_dir = tmp_path / "uninterrupted"
    train_sft(config, reference_dir, show_progress=False)

    run_dir = tmp_path / "stopped"
    stopped = train_sft(config, run_dir, show_progress=False, stop=StopAfter(run_dir, 2))
    assert stopped.status == "stopped" and stopped.steps == 2
    assert (run_dir / "checkpoints" / "step-2").exists() and not (run_dir / "final").exists()
    assert json.loads((run_dir / "status.json").read_text())["stage"] == "stopped"

    resumed = train_sft(config, run_dir, resume=True, show_progress=False)
    assert resumed.status == "completed" and resumed.steps == 4
    assert resumed.val_before == stopped.val_before
    expected, got = metrics_by_step(reference_dir), metrics_by_step(run_dir)
    assert sorted(got) == [0, 1, 2, 3, 4]
    for step in range(5):
        for key in COMPARED:
            assert got[step].get(key) == expected[step].get(key), (step, key)


@pytest.fixture
def keep_sigterm_handler():
    """`openrft sft` installs a SIGTERM handler; put pytest's back afterwards."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


@pytest.mark.usefixtures("keep_sigterm_handler")
def test_cli_from_reference_reads_rl_rows_and_remembers_it(tmp_path, tiny_model_dir, capsys):
    rl_config = tiny_job(tmp_path, tiny_model_dir, "train.max_steps=2", "checkpoint.interval=1")
    args = ["sft", str(config_file(tmp_path, rl_config)), "--no-progress", "--output"]
    assert main([*args, str(tmp_path / "plain")]) == 1
    stderr = capsys.readouterr().err
    assert "train.jsonl:1: messages[-1].role" in stderr and "--from-reference" in stderr
    assert json.loads((tmp_path / "plain" / "status.json").read_text())["stage"] == "failed"

    run_dir = tmp_path / "sft"
    assert main([*args, str(run_dir), "--from-reference"]) == 0
    assert "validation loss: before" in capsys.readouterr().out
    assert read_options(run_dir) == SFTOptions(from_reference=True)
    assert main(["sft", "--resume", str(run_dir)]) == 1
    assert "finished already" in capsys.readouterr().err
    assert main([*args, str(run_dir)]) == 1
    assert "already holds a run" in capsys.readouterr().err


def test_rft_chained_from_sft_starts_from_the_sft_adapter(tmp_path, tiny_model_dir):
    sft_dir = tmp_path / "sft"
    train_sft(sft_job(tmp_path, tiny_model_dir), sft_dir, show_progress=False)
    sft_weights = load_file(sft_dir / "final" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in sft_weights.items())

    rl_config = tiny_job(
        tmp_path, tiny_model_dir, f'model.init_from="{sft_dir}"', "train.max_steps=1"
    )
    policy = build_policy(rl_config)
    loaded = {
        name.replace(".default", "").removeprefix("base_model.model."): p.detach()
        for name, p in policy.model.named_parameters()
        if "lora_" in name
    }
    stored = {k.removeprefix("base_model.model."): v for k, v in sft_weights.items()}
    assert loaded.keys() == stored.keys()
    assert all(torch.equal(loaded[k], stored[k]) for k in stored)
    assert all(p.requires_grad for n, p in policy.model.named_parameters() if "lora_" in n)

    summary = train(rl_config, tmp_path / "rft", show_progress=False)
    assert summary.status == "completed" and summary.steps == 1
    rft_weights = load_file(tmp_path / "rft" / "final" / "adapter_model.safetensors")
    assert rft_weights.keys() == sft_weights.keys()
