"""Remote environments: a native environment hosted by `openrft env serve` (the app, on a real
uvicorn server on loopback) and driven over HTTP by the episode runner, which must give the
same episodes as in-process; retried steps answered once; failures counted on the episode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from openrft.config import load_config
from openrft.errors import ConfigError
from openrft.net import EndpointFailure, background, request_with_retries
from openrft.serve.env_host import make_app
from openrft.train.episodes import episode_job
from tests.rollout.test_episodes import END, ENV_PY, run

GUESSES = ["I guess 3", "I guess 8", "I guess 5"]


@pytest.fixture(scope="module")
def env_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("remote-env") / "guess_env.py"
    path.write_text(ENV_PY + COUNTING_ENV)
    return path


COUNTING_ENV = """
STEPS = []
CLOSED = []

class Counting:
    def __init__(self, item):
        self.item = item

    def step(self, message):
        STEPS.append(message["content"])
        return {"messages": [{"role": "user", "content": f"seen {len(STEPS)}"}], "done": False}

    def close(self):
        CLOSED.append(self.item["id"])

def make_counting(item):
    return Counting(item)
"""


@pytest.fixture(scope="module")
def tokenizer():
    from tiny_model import build_tool_tokenizer

    return build_tool_tokenizer()


def row(reference="5", **metadata):
    from openrft.types import Example

    return Example("r", ({"role": "user", "content": "play"},), reference, metadata)


@pytest.mark.parametrize("factory", ["make_env", "make_async_env"])
def test_a_hosted_environment_gives_the_same_episodes_as_in_process(tokenizer, env_file, factory):
    local, _, _ = run(
        tokenizer, [f"env.environment={env_file}:{factory}"], lambda s, t: GUESSES[t], [row()]
    )
    with background(make_app(f"{env_file}:{factory}")) as url:
        remote, policy, _ = run(
            tokenizer, [f"env.environment={url}"], lambda s, t: GUESSES[t], [row()]
        )
        episodes = httpx.get(url + "health").json()["episodes"]
    for here, there in zip(local[0], remote[0], strict=True):
        a, b = here.episode, there.episode
        assert b.finish_reason == "stop" and b.error is None
        assert b.messages() == a.messages()  # reset()'s opening, hints, in order
        assert [t.reward for t in b.turns] == [t.reward for t in a.turns] == [-0.1] * 3
        assert [t.metrics for t in b.turns] == [t.metrics for t in a.turns]
        assert b.prompt_token_ids == a.prompt_token_ids
        assert b.segments() == a.segments()  # token for token the same training row
    assert episodes == 0  # every episode was closed at the end of the rollout


def test_a_retried_step_is_answered_once_and_turns_must_follow(env_file):
    app = make_app(f"{env_file}:make_counting")
    with background(app) as url:
        module = _module_of(app)
        created = httpx.post(url + "episodes", json={"item": {"id": "a"}}).json()
        assert created["messages"] is None  # no reset(): the row's own messages open it
        step = f"{url}episodes/{created['episode_id']}/step"
        message = {"role": "assistant", "content": "hello"}
        first = httpx.post(step, json={"turn": 0, "message": message}).json()
        again = httpx.post(step, json={"turn": 0, "message": message}).json()
        assert (
            first
            == again
            == {
                "messages": [{"role": "user", "content": "seen 1"}],
                "reward": None,
                "done": False,
                "metrics": {},
            }
        )
        assert module.STEPS == ["hello"]  # the retry did not step again
        skipped = httpx.post(step, json={"turn": 5, "message": message})
        assert skipped.status_code == 409 and "expected turn 1" in skipped.json()["error"]
        bad = httpx.post(step, json={"turn": 1})
        assert bad.status_code == 400 and "'message'" in bad.json()["error"]
        assert httpx.delete(url + f"episodes/{created['episode_id']}").status_code == 204
        assert module.CLOSED == ["a"]
        assert httpx.post(step, json={"turn": 1, "message": message}).status_code == 404


def test_idle_episodes_are_closed_and_a_full_host_asks_to_retry(env_file):
    app = make_app(f"{env_file}:make_counting", max_episodes=1, idle_timeout_s=0.2)
    with background(app) as url:
        module = _module_of(app)
        assert httpx.post(url + "episodes", json={"item": {"id": "idle"}}).status_code == 200
        full = httpx.post(url + "episodes", json={"item": {"id": "second"}})
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        time.sleep(0.3)
        assert httpx.get(url + "health").json()["episodes"] == 0
        assert "idle" in module.CLOSED
        assert httpx.post(url + "episodes", json={"item": {"id": "third"}}).status_code == 200


def test_a_failing_remote_environment_fails_the_episode_with_its_error(tokenizer, env_file):
    with background(make_app(f"{env_file}:make_env")) as url:
        groups, _, _ = run(
            tokenizer, [f"env.environment={url}"], lambda s, t: "I guess 1", [row(style="raise")]
        )
    episode = groups[0][0].episode
    assert episode.finish_reason == "error"
    assert "422" in episode.error and "simulator crashed" in episode.error


def test_a_service_that_goes_away_fails_episodes_not_the_rollout(tokenizer, env_file):
    app = make_app(f"{env_file}:make_env")
    with background(app) as url:
        config = load_config(None, [f"env.environment={url}", "env.remote_retries=1"])
        job = episode_job(config, tokenizer, frozenset({tokenizer.convert_tokens_to_ids(END)}))
    try:  # the server is gone before the first episode starts
        from openrft.data.render import encode_prompt
        from openrft.rollout.episodes import run_episodes
        from openrft.types import SamplingParams
        from tests.rollout.test_episodes import ScriptedPolicy

        example = row()
        prompt = encode_prompt(example.messages, tokenizer, "model")
        policy = ScriptedPolicy(tokenizer, lambda s, t: "I guess 5")
        groups = run_episodes(policy, [example], [prompt], SamplingParams(n=2), job.setup)
    finally:
        job.close()
    assert all(c.finish_reason == "error" for c in groups[0])
    assert "make_env/reset failed" in groups[0][0].episode.error
    assert "2 tries" in groups[0][0].episode.error


def test_an_unreachable_service_is_refused_at_job_start(tokenizer):
    config = load_config(None, ["env.environment=http://127.0.0.1:9", "env.remote_retries=0"])
    with pytest.raises(ConfigError, match=r"env\.environment.*127\.0\.0\.1:9"):
        episode_job(config, tokenizer, frozenset())


def test_retries_back_off_on_5xx_and_stop_at_4xx():
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app, calls = FastAPI(), []

    def flaky() -> JSONResponse:
        calls.append(1)
        return JSONResponse({"n": len(calls)}, status_code=200 if len(calls) == 3 else 503)

    def refused() -> JSONResponse:
        return JSONResponse({"error": "no"}, status_code=403)

    app.add_api_route("/flaky", flaky, methods=["POST"])
    app.add_api_route("/refused", refused, methods=["POST"])
    with background(app) as url:
        answer = request_with_retries("POST", url + "flaky", timeout_s=5, backoff_s=0.01)
        assert answer.json() == {"n": 3} and len(calls) == 3
        with pytest.raises(EndpointFailure) as failure:
            request_with_retries("POST", url + "flaky", timeout_s=5, attempts=1)
        with pytest.raises(EndpointFailure) as refused_failure:
            request_with_retries("POST", url + "refused", timeout_s=5, backoff_s=0.01)
    assert failure.value.kind == "server_error" and "503" in str(failure.value)
    assert refused_failure.value.kind == "client_error" and refused_failure.value.status == 403


def test_openrft_env_serve_hosts_a_builtin_environment():
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openrft.cli",
            "env",
            "serve",
            "builtin:guess_number",
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("Serving environment builtin:guess_number at http://"), line
        url = line.split(" at ")[1].split()[0]
        deadline = time.monotonic() + 20
        while True:
            try:
                health = httpx.get(url + "health").json()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert health["status"] == "ok" and health["environment"] == "builtin:guess_number"
        item = {"reference_answer": "7", "high": 50, "messages": []}
        created = httpx.post(url + "episodes", json={"item": item}).json()
        answer = httpx.post(
            f"{url}episodes/{created['episode_id']}/step",
            json={"turn": 0, "message": {"role": "assistant", "content": "7"}},
        ).json()
        assert answer["done"] is True and answer["reward"] == 1.0, json.dumps(answer)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _module_of(app):
    """The namespace of the user's file behind a hosted factory (its STEPS and CLOSED)."""

    class Namespace:
        def __init__(self, names):
            self.__dict__ = names

    return Namespace(app.state.factory.__globals__)


def test_a_service_written_from_scratch_in_the_standard_library(tokenizer):
    """The contract is implementable without openrft: the recipes' stdlib service plays the
    game through the episode runner like the hosted make_env does."""
    from openrft.train.episodes import RECIPES

    script = RECIPES / "services" / "guess_number_service.py"
    process = subprocess.Popen(
        [sys.executable, str(script), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        url = process.stdout.readline().split(" at ")[1].strip()
        guesses = ["I guess 40", "20", "then 31"]
        example = row("31", high=50)
        groups, _, _ = run(
            tokenizer, [f"env.environment={url}"], lambda s, t: guesses[t], [example]
        )
        episode = groups[0][0].episode
        assert episode.finish_reason == "stop"
        assert [t.reward for t in episode.turns] == [0.0, 0.0, 1.0]
        hints = [m["content"] for m in episode.messages() if m["role"] == "user"][1:]
        assert hints == ["Lower. Guess again.", "Higher. Guess again.", "Correct!"]
        assert httpx.get(url + "/health").json()["episodes"] == 0  # closed after the rollout
    finally:
        process.terminate()
        process.wait(timeout=10)
