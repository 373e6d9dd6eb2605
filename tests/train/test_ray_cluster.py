"""A job on a real Ray cluster on loopback: a head and a second node (two raylets, each its
own processes), rollout and grader actors spread over both; workers killed mid-call, a hung
grader, a broken weight transfer; a whole job sampling one step ahead."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from openrft.errors import WeightSyncError  # noqa: E402
from openrft.rollout.hf_engine import PROBE_TOKENS  # noqa: E402
from openrft.train import ray_workers  # noqa: E402
from openrft.train.loop import train  # noqa: E402
from openrft.train.policy import build_policy  # noqa: E402
from openrft.train.ray_workers import RayGraderPool, RayRolloutPool  # noqa: E402
from openrft.types import Sample, SamplingParams  # noqa: E402
from tests.train.helpers import tiny_job  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SLOW_GRADER = """
import time

def reward(response, item):
    time.sleep({"hang": 3600, "slow": 1}.get(item.get("reference_answer"), 0))
    return float(len(response))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node and a second node joined to it, then this process connected as a driver."""
    # A short path of its own: Ray's socket paths must stay under 107 characters.
    root = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    temp = os.path.join(root, "ray")  # where Ray looks for its cluster's address under RAY_TMPDIR
    os.makedirs(temp)
    saved = {key: os.environ.get(key) for key in ("RAY_TMPDIR", "RAY_AUTH_MODE")}
    os.environ["RAY_TMPDIR"] = root
    os.environ["RAY_AUTH_MODE"] = "disabled"  # loopback only; no token file in $HOME
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False, "temp_dir": temp},
    )
    try:
        cluster.add_node(num_cpus=2, temp_dir=temp)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture()
def job(tmp_path, tiny_model_dir, cluster):
    def make(*overrides: str):
        return tiny_job(tmp_path, tiny_model_dir, "cluster.backend=ray",
                        f'cluster.address="{cluster.address}"', "cluster.worker_cpus=1",
                        *overrides)  # fmt: skip

    return make


def sample(text: str, reference: str = "a") -> Sample:
    return Sample(
        id=text, messages=({"role": "assistant", "content": text},), reference_answer=reference
    )


def test_a_job_runs_with_its_workers_spread_over_both_nodes(job, tmp_path):
    config = job("cluster.rollout_workers=2", "cluster.reward_workers=2", "train.max_steps=2",
                 "rollout.max_off_policy_steps=1")  # fmt: skip
    policy = build_policy(config)
    probe = list(range(3, 3 + PROBE_TOKENS))
    pool = RayRolloutPool(config, policy, probe, ray)
    try:
        nodes = ray.get([actor.node.remote() for actor in pool.actors])
        assert len(set(nodes)) == 2  # SPREAD: one rollout worker on each node
    finally:
        pool.close()
    train(config, tmp_path / "run", show_progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "reward/mean" in r and r.get("step")]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["cluster/rollout_workers"] == 2 and r["cluster/reward_workers"] == 2
               for r in records)  # fmt: skip
    assert [r["off_policy/lag_max"] for r in records] == [0, 1]
    assert all(r["rollout/probe_logprob_gap"] < 1e-3 for r in records)


def test_a_rollout_worker_killed_mid_step_is_restarted_and_its_work_redone(job):
    config = job("cluster.rollout_workers=2", "rollout.batch_size=4")  # one prompt a chunk
    policy = build_policy(config)
    pool = RayRolloutPool(config, policy, list(range(3, 3 + PROBE_TOKENS)), ray)
    try:
        pool.sync_weights(policy.model, 1)
        prompts = [[5 + i, 7, 9, 11] for i in range(8)]
        params = SamplingParams(n=4, temperature=1.0, max_new_tokens=200, seed=5)
        expected = pool.generate(prompts, params)  # chunk c is seeded alike on any worker
        victim = pool.worker_pids()[1]
        result: list = []
        runner = threading.Thread(target=lambda: result.append(pool.generate(prompts, params)))
        runner.start()
        time.sleep(0.3)
        os.kill(victim, signal.SIGKILL)
        runner.join(timeout=300)
        assert result and result[0] == expected
        assert pool.restarts >= 1
        assert pool.alive() == 2 and victim not in pool.worker_pids()
    finally:
        pool.close()


def test_a_grader_worker_killed_mid_call_is_retried(job, tmp_path):
    grader_file = tmp_path / "slow.py"
    grader_file.write_text(SLOW_GRADER)
    config = job("cluster.reward_workers=1", f'reward.grader="{grader_file}:reward"')
    pool = RayGraderPool(config, ray)
    try:
        pid = ray.get(pool.actors[0].ready.remote())
        result: list = []
        slow = [sample("abc", reference="slow")]
        runner = threading.Thread(target=lambda: result.append(pool.grade(slow)))
        runner.start()
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        runner.join(timeout=120)
        assert [g.score for g in result[0]] == [3.0]  # graded again by the restarted worker
        assert pool.restarts == 1
    finally:
        pool.close()


def test_a_hung_grader_is_killed_at_its_timeout_and_the_next_call_works(job, tmp_path):
    grader_file = tmp_path / "slow.py"
    grader_file.write_text(SLOW_GRADER)
    config = job("cluster.reward_workers=1", f'reward.grader="{grader_file}:reward"',
                 "reward.batch_timeout_s=2", "reward.timeout_s=3000")  # fmt: skip
    pool = RayGraderPool(config, ray)
    try:
        before = ray.get(pool.actors[0].ready.remote())
        started = time.monotonic()
        hung = pool.grade([sample("abc", reference="hang")])
        assert time.monotonic() - started < 30
        assert hung[0].error is not None and hung[0].error.kind == "timeout"
        after = pool.grade([sample("abcd")])
        assert [g.score for g in after] == [4.0], after
        now = ray_workers.wait_restarted(ray, pool.actors[0], 60)
        assert now != before  # a new process: the old one was killed
        with pytest.raises(ProcessLookupError):
            os.kill(before, 0)
    finally:
        pool.close()


def test_an_engine_that_did_not_take_the_update_stops_the_job(job, monkeypatch):
    config = job("cluster.rollout_workers=1")
    policy = build_policy(config)
    pool = RayRolloutPool(config, policy, list(range(3, 3 + PROBE_TOKENS)), ray)
    try:
        real = ray_workers.trainable_weights

        def damaged(model):
            weights = real(model)
            name = next(n for n in weights if "lora_B" in n)
            weights[name] = weights[name] + 0.5  # a transfer that changed a tensor
            return weights

        monkeypatch.setattr(ray_workers, "trainable_weights", damaged)
        with pytest.raises(WeightSyncError, match="nats from the trainer"):
            pool.sync_weights(policy.model, 1)
    finally:
        pool.close()
