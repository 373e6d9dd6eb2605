"""Guess the number as an OpenEnv server (openenv-core's create_app), for
recipes/guess-number-openenv-qwen.toml and docs/openenv.md. It needs openenv-core, which
openrft keeps out of its own environment: `make openenv`, then

    .venv-openenv/bin/python openrft/recipes/services/openenv_guess_number.py --port 8200

The secret comes from the reset's seed (openrft sends one per row), the action is the reply
text (env.openenv_action = "text:guess"), the reward 1 on the turn that finds the number.
"""

import argparse
import random
import re

import uvicorn
from openenv.core.env_server import create_app
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, Observation, State
from pydantic import Field

NUMBER = re.compile(r"-?\d+")
HIGH = 50


class GuessAction(Action):
    guess: str = Field(..., max_length=200)  # the model's reply; its last number is the guess


class GuessObservation(Observation):
    prompt: str = ""


class GuessNumberEnv(Environment):
    SUPPORTS_CONCURRENT_SESSIONS = True

    def reset(self, seed=None, episode_id=None, **kwargs):
        self.secret = random.Random(seed).randint(1, HIGH)
        self.guesses = 0
        return GuessObservation(prompt="Your first guess?")

    def step(self, action, timeout_s=None, **kwargs):
        numbers = NUMBER.findall(action.guess)
        if not numbers:
            return GuessObservation(prompt=f"Answer with one number from 1 to {HIGH}.", reward=0.0)
        self.guesses += 1
        guess = int(numbers[-1])
        if guess == self.secret:
            return GuessObservation(prompt="Correct!", reward=1.0, done=True)
        hint = "Higher." if guess < self.secret else "Lower."
        return GuessObservation(prompt=f"{hint} Guess again.", reward=0.0)

    @property
    def state(self):
        return State(step_count=self.guesses)


def main():
    parser = argparse.ArgumentParser(description="guess the number, as an OpenEnv server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--max-sessions", type=int, default=64, help="max_concurrent_envs")
    args = parser.parse_args()
    app = create_app(
        GuessNumberEnv, GuessAction, GuessObservation, max_concurrent_envs=args.max_sessions
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
