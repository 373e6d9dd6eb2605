"""The OpenEnv adapter against real OpenEnv servers: openenv-core's own create_app, run with
uvicorn in its own venv (`make openenv`; tests/openenv_env.py), serving two environments
written here: guess-the-number (a JSON action with an integer) and an echo (a string action)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import httpx
import pytest
from openenv_env import OPENENV_PYTHON, needs_openenv

from openrft.errors import ConfigError
from openrft.rollout.environment import EnvironmentFailure, check_step
from openrft.rollout.openenv_env import OpenEnvService, OpenEnvSettings
from openrft.rollout.tool_calls import ParsedTurn

pytestmark = needs_openenv

SERVER_PY = """
import sys

import uvicorn
from fastapi import FastAPI
from pydantic import Field

from openenv.core.env_server import create_app
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, Observation, State


class GuessAction(Action):
    guess: int = Field(..., ge=1, le=10)


class GuessObservation(Observation):
    prompt: str = ""


class GuessEnv(Environment):
    SUPPORTS_CONCURRENT_SESSIONS = True

    def reset(self, seed=None, episode_id=None, **kwargs):
        self.secret = 6 if seed is None else seed % 10 + 1
        self.tries = 0
        return GuessObservation(prompt="Guess my number from 1 to 10.")

    def step(self, action, timeout_s=None, **kwargs):
        self.tries += 1
        if action.guess == self.secret:
            return GuessObservation(prompt="Correct!", reward=1.0, done=True)
        hint = "higher" if action.guess < self.secret else "lower"
        text = f"{action.guess} is wrong (try {self.tries}): go {hint}."
        return GuessObservation(prompt=text, reward=0.0)

    @property
    def state(self):
        return State(step_count=self.tries)


class EchoAction(Action):
    text: str = Field(..., max_length=20)


class EchoObservation(Observation):
    echoed: str = ""
    length: int = 0


class EchoEnv(Environment):
    SUPPORTS_CONCURRENT_SESSIONS = True

    def reset(self, seed=None, episode_id=None, **kwargs):
        return EchoObservation()

    def step(self, action, timeout_s=None, **kwargs):
        done = action.text == "bye"
        return EchoObservation(echoed=action.text, length=len(action.text), reward=1.0, done=done)

    @property
    def state(self):
        return State()


app = FastAPI()
app.mount("/guess", create_app(GuessEnv, GuessAction, GuessObservation, max_concurrent_envs=4))
app.mount("/echo", create_app(EchoEnv, EchoAction, EchoObservation, max_concurrent_envs=2))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(directory) -> tuple[subprocess.Popen, str]:
    script = directory / "openenv_server.py"
    script.write_text(SERVER_PY)
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if k != "ENABLE_WEB_INTERFACE"}
    process = subprocess.Popen([OPENENV_PYTHON, str(script), str(port)], env=environ)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "the OpenEnv server exited"
        try:
            if httpx.get(f"{url}/guess/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("the OpenEnv server did not start")


def stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process, url = start_server(tmp_path_factory.mktemp("openenv"))
    yield url
    stop(process)


def service(url: str, action: str = "json", **settings) -> OpenEnvService:
    checked = OpenEnvService(OpenEnvSettings(url, action, timeout_s=10, **settings))
    checked.check()
    return checked


def reply(text: str) -> ParsedTurn:
    return ParsedTurn(text)  # what the runner passes without a tool parser


ROW = {"id": "r", "messages": [{"role": "system", "content": "Play."}], "seed": 4}  # secret 5


def test_a_guessing_episode_from_reset_to_done(server):
    guesses = service(f"{server}/guess")
    env = guesses.environment(ROW)
    try:
        assert env.reset() == [
            {"role": "system", "content": "Play."},
            {"role": "user", "content": "Guess my number from 1 to 10."},
        ]
        answers = [
            env.step(reply(text))
            for text in ('{"guess": 3}', '```json\n{"guess": 7}\n```', 'I say {"guess": 5}.')
        ]
    finally:
        env.close()
    assert [a["messages"][0]["content"] for a in answers] == [
        "3 is wrong (try 1): go higher.",
        "7 is wrong (try 2): go lower.",
        "Correct!",
    ]
    assert [(a["reward"], a["done"]) for a in answers] == [(0.0, False), (0.0, False), (1.0, True)]
    assert all(a["metrics"] == {"action_errors": 0} for a in answers)
    for answer in answers:  # what the runner accepts from an environment
        assert check_step(answer, "step()").messages[0]["role"] == "user"
    assert guesses.slots.held == 0


def test_a_reply_that_is_no_action_is_answered_to_the_model_and_never_sent(server):
    env = service(f"{server}/guess").environment(ROW)
    try:
        env.reset()
        bad = [env.step(reply(t)) for t in ("five", '{"guess": "five"}', '{"guess": 11}', "{")]
        good = env.step(reply('{"guess": 2}'))
    finally:
        env.close()
    problems = [b["messages"][0]["content"] for b in bad]
    assert all(p.startswith("Invalid action: ") for p in problems)
    assert "no JSON object" in problems[0] and "guess (integer, required)" in problems[0]
    assert "guess: 'five' is not of type 'integer'" in problems[1]
    assert "guess: 11 is greater than the maximum of 10" in problems[2]
    assert "not valid JSON" in problems[3]
    assert [(b["reward"], b["done"], b["metrics"]) for b in bad] == [
        (None, False, {"action_errors": n}) for n in (1, 2, 3, 4)
    ]
    # the server saw one action: the good one is its first try
    assert good["messages"][0]["content"] == "2 is wrong (try 1): go higher."
    assert good["metrics"] == {"action_errors": 4}


def test_text_mode_puts_the_reply_in_one_field(server):
    for mode in ("text:text", "text"):  # plain "text": the action's only string field
        echo = service(f"{server}/echo", mode)
        assert echo.text_field == "text"
        env = echo.environment({"messages": []})
        try:
            # an observation with no text field is shown as its JSON
            assert env.reset() == [{"role": "user", "content": '{"echoed": "", "length": 0}'}]
            hello = env.step(reply("hello {there}"))
            too_long = env.step(reply("x" * 21))
            bye = env.step(reply("bye"))
        finally:
            env.close()
        assert hello["messages"] == [
            {"role": "user", "content": '{"echoed": "hello {there}", "length": 13}'}
        ]
        assert (hello["reward"], hello["done"]) == (1.0, False)
        assert "text: 'xxxxxxxxxxxxxxxxxxxxx' is too long" in too_long["messages"][0]["content"]
        assert too_long["metrics"] == {"action_errors": 1}
        assert (bye["reward"], bye["done"], bye["metrics"]) == (1.0, True, {"action_errors": 1})


def test_sessions_past_the_servers_limit_wait_for_a_free_one(server):
    echo = service(f"{server}/echo", "text:text")  # the server allows 2 sessions
    assert echo.slots.limit is None  # no route states the limit: a refusal teaches it
    first, second, third = (echo.environment({"messages": []}) for _ in range(3))
    first.reset()
    second.reset()
    opened = threading.Event()
    thread = threading.Thread(target=lambda: (third.reset(), opened.set()))
    thread.start()
    try:
        assert not opened.wait(1.5)  # refused by the server, then waiting on the job's bound
        assert echo.slots.limit == 2 and echo.slots.held == 2
        first.close()
        assert opened.wait(5)
        assert third.step(reply("hi"))["messages"][0]["content"] == '{"echoed": "hi", "length": 2}'
    finally:
        for env in (first, second, third):
            env.close()
        thread.join(10)
    assert echo.slots.held == 0

    # a configured bound holds before the server refuses anything
    bounded = service(f"{server}/echo", "text:text", max_sessions=1)
    one, two = bounded.environment({"messages": []}), bounded.environment({"messages": []})
    one.reset()
    waited = threading.Thread(target=two.reset)
    waited.start()
    time.sleep(0.5)
    assert waited.is_alive() and bounded.slots.held == 1
    one.close()
    waited.join(5)
    assert not waited.is_alive() and bounded.slots.held == 1
    bounded.close()  # at the job's end: closes what no episode closed
    assert bounded.slots.held == 0 and two.socket is None


def test_a_reset_whose_connection_fails_is_tried_once_more(server):
    guesses = service(f"{server}/guess")
    url, guesses.ws_url = guesses.ws_url, f"ws://127.0.0.1:{free_port()}/ws"  # nobody there
    connect = guesses.connect

    def connect_then_heal(exits):
        try:
            return connect(exits)
        finally:
            guesses.ws_url = url

    guesses.connect = connect_then_heal
    env = guesses.environment(ROW)
    try:
        assert env.reset()[-1]["content"] == "Guess my number from 1 to 10."
        assert guesses.slots.held == 1
    finally:
        env.close()
    assert guesses.slots.held == 0


def test_a_server_killed_mid_episode_fails_the_episode(tmp_path):
    process, url = start_server(tmp_path)
    guesses = service(f"{url}/guess")
    env = guesses.environment(ROW)
    try:
        env.reset()
        assert env.step(reply('{"guess": 1}'))["done"] is False
        stop(process)
        with pytest.raises(EnvironmentFailure, match="session lost mid-episode.*gone"):
            env.step(reply('{"guess": 2}'))
        env.close()  # never raises
        assert guesses.slots.held == 0
        # a reset is tried on a new connection once, then fails the episode
        with pytest.raises(EnvironmentFailure, match="tried twice: cannot connect"):
            guesses.environment(ROW).reset()
        assert guesses.slots.held == 0
    finally:
        if process.poll() is None:
            stop(process)


def test_an_unusable_server_or_action_mode_is_a_config_error_at_check(server):
    with pytest.raises(ConfigError, match="env.openenv_url"):
        service(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConfigError, match="env.openenv_url.*404"):
        service(f"{server}/nowhere")
    for mode, problem in [
        ("text:guess", "'guess' is not a string field"),
        ("text", "plain 'text' needs the action's one string field; it has \\[\\]"),
        ("text:nope", "'nope' is not a string field"),
        ("yaml", "use 'json' or 'text:<field>'"),
    ]:
        with pytest.raises(ConfigError, match=f"env.openenv_action.*{problem}"):
            service(f"{server}/guess", mode)
    schemas = service(f"{server}/guess").check()
    assert schemas["action"]["properties"]["guess"]["type"] == "integer"


def test_episodes_through_the_runner(server):
    """A job's env.openenv_url through the real episode runner with a scripted policy: G = 2
    episodes, each its own session."""
    from tiny_model import build_tool_tokenizer

    from openrft.config import load_config
    from openrft.data.render import encode_prompt
    from openrft.rollout.episodes import run_episodes
    from openrft.train.episodes import episode_job
    from openrft.types import SamplingParams
    from tests.rollout.test_episodes import END, ScriptedPolicy, example

    tokenizer = build_tool_tokenizer()
    config = load_config(None, [f"env.openenv_url={server}/guess"])
    job = episode_job(config, tokenizer, frozenset({tokenizer.convert_tokens_to_ids(END)}))
    guesses = job.service
    script = ['{"guess": 3}', "I do not know", '{"guess": 5}']
    row = example("Play.", seed=4)
    prompts = [encode_prompt(row.messages, tokenizer, "model")]
    try:
        policy = ScriptedPolicy(tokenizer, lambda seq, turn: script[turn])
        [group] = run_episodes(policy, [row], prompts, SamplingParams(n=2), job.setup)
    finally:
        job.close()
    for completion in group:
        episode = completion.episode
        assert episode.finish_reason == "stop", episode.error
        assert [t.reward for t in episode.turns] == [0.0, None, 1.0]
        assert episode.env_metrics() == {"action_errors": 1.0}
        assert [(m["role"], m["content"][:20]) for m in episode.messages()] == [
            ("user", "Play."),
            ("user", "Guess my number from"),
            ("assistant", '{"guess": 3}'),
            ("user", "3 is wrong (try 1): "),
            ("assistant", "I do not know"),
            ("user", "Invalid action: your"),
            ("assistant", '{"guess": 5}'),
            ("user", "Correct!"),
        ]
    assert guesses.slots.held == 0


def test_a_rows_episodes_reset_with_one_seed():
    """Without a `seed` field a row's seed comes from its id: its G episodes (and a resumed
    run's) face the same environment."""
    from openrft.rollout.openenv_env import row_seed

    assert row_seed({"id": "row-1"}) == row_seed({"id": "row-1", "other": 1})
    assert row_seed({"id": "row-1"}) != row_seed({"id": "row-2"})
    assert 0 <= row_seed({"messages": [{"role": "user", "content": "hi"}]}) < 2**31
