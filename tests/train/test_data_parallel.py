"""Data-parallel updates: two real gloo processes on loopback train their shards and end with
the weights, gradients and stats of one process trained on the whole batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from openrft.train.data_parallel import _buckets, shard, torchrun_place, weights_checksum

from .data_parallel_worker import SCENARIOS, run_scenario

WORKER = Path(__file__).with_name("data_parallel_worker.py")
RANKS = 2
EXACT_STATS = ("optimizer_steps", "trained_sequences", "trained_tokens")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tiny_model_dir, tmp_path_factory) -> Path:
    """Every scenario run by 2 ranks, as torchrun would start them; their results' folder."""
    out = tmp_path_factory.mktemp("data-parallel")
    base = {
        **os.environ,
        "WORLD_SIZE": str(RANKS),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "GLOO_SOCKET_IFNAME": "lo",  # loopback only, whatever the host's name resolves to
        "OMP_NUM_THREADS": "1",
    }
    processes = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(tiny_model_dir), str(out)],
            env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(RANKS)
    ]
    logs = []
    try:
        for process in processes:
            logs.append(process.communicate(timeout=180)[0])
    finally:
        for process in processes:  # a hung rank must not outlive the test
            if process.poll() is None:
                process.kill()
    failed = [
        (rank, log)
        for rank, (p, log) in enumerate(zip(processes, logs, strict=True))
        if p.returncode
    ]
    assert not failed, f"rank {failed[0][0]} failed:\n{failed[0][1][-4000:]}"
    return out


def assert_near(actual: torch.Tensor, expected: torch.Tensor, scale: float, rel: float) -> None:
    """Every element within rel * scale of the expected one (scale: the tensor's magnitude,
    so that elements near 0 are held to the same absolute bound as the large ones)."""
    assert scale > 0
    gap = float((actual - expected).abs().max())
    assert gap <= rel * scale, f"off by {gap:.3g}, {gap / scale:.3g} of the scale"


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_ranks_end_with_one_process_weights_gradients_and_stats(ranks, tiny_model_dir, name):
    single = run_scenario(SCENARIOS[name], tiny_model_dir, None)
    per_rank = [torch.load(ranks / f"{name}-{rank}.pt") for rank in range(RANKS)]
    lead, follower = per_rank
    # The ranks hold the very same bits: gloo hands every rank one reduced sum.
    for param, value in lead["params"].items():
        assert torch.equal(value, follower["params"][param]), param
    # One process's numbers up to rounding. The plain forward matches to float64 rounding;
    # the packed one to ~1e-7 of the gradient's scale, as it does in one process when the
    # micro-batch size changes: a group split over ranks computes its prompt once per rank,
    # and the tiny Llama's RMSNorm computes in float32 even in a float64 model.
    for result in per_rank:
        assert len(result["grads"]) == len(single["grads"]) > 0
        for step, expected in zip(result["grads"], single["grads"], strict=True):
            assert step.keys() == expected.keys()
            for param, grad in expected.items():
                assert_near(step[param], grad, float(grad.abs().max()), rel=1e-6)
        for param, value in single["params"].items():
            update = float((value - single["start"][param]).abs().max())
            assert update > 0, f"the update left {param} as it was: the comparison proves nothing"
            assert_near(result["params"][param], value, update, rel=1e-5)
    for result in per_rank:
        if result["stats"] is None:  # a follower: follow() returns no stats
            continue
        for key, value in single["stats"].items():
            if key in EXACT_STATS or value is None:
                assert result["stats"][key] == value, key
            else:
                assert result["stats"][key] == pytest.approx(value, rel=1e-6, abs=1e-12), key


def test_the_uneven_scenario_leaves_a_rank_without_rows():
    # What the uneven scenario claims to cover: a mini-batch where rank 1 trains nothing.
    scenario = SCENARIOS["uneven"]
    forward_rows = [[0, 1, 2], [3]]  # mini-batches of 3 and 2 rows; row 4 has no signal
    assert not any(scenario.rows[4].advantages)
    assert [shard(rows, 1, RANKS) for rows in forward_rows] == [[2], []]


def test_shards_are_contiguous_balanced_and_cover_the_batch():
    for count in range(0, 12):
        for world in (1, 2, 3, 5):
            items = list(range(100, 100 + count))
            parts = [shard(items, rank, world) for rank in range(world)]
            assert [i for part in parts for i in part] == items
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_torchrun_place_reads_the_launcher_variables():
    assert torchrun_place({}) is None
    assert torchrun_place({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert torchrun_place({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == (3, 4, 1)


def test_gradient_buckets_keep_one_dtype_and_a_size_limit():
    tensors = [torch.zeros(3), torch.zeros(4), torch.zeros(2, dtype=torch.float64), torch.zeros(9)]
    sizes = [[t.numel() for t in bucket] for bucket in _buckets(tensors, limit=8)]
    assert sizes == [[3, 4], [2], [9]]


def test_the_weights_checksum_moves_with_any_weight():
    model = torch.nn.Linear(3, 2).double()
    before = weights_checksum(model)
    assert torch.equal(weights_checksum(model), before)  # the same weights: the same bits
    with torch.no_grad():
        model.bias[1] += 1e-9
    assert not torch.equal(weights_checksum(model), before)
