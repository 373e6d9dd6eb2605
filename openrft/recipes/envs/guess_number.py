"""Guess the number (env.environment = "builtin:guess_number"): a multi-turn environment with
feedback every turn, written as a user's would be (no openrft import).

The row's reference answer is the secret, between 1 and the row's `high` (default 100). The
model guesses by ending its turn with a number; the environment answers "higher", "lower" or
"correct". A turn without a number gets a reminder. Reward per turn: 1 on the turn that finds
the number, else 0 (env.reward = "turns" trains on their sum: 1 for a solved episode; with
grpo_per_turn each turn's advantage comes from whether the episode was solved after it); the
metric `guesses` counts guesses.
"""

import re

NUMBER = re.compile(r"-?\d+")


class GuessNumber:
    def __init__(self, item):
        self.secret = int(item["reference_answer"])
        self.high = int(item.get("high", 100))
        self.guesses = 0

    def step(self, message):
        numbers = NUMBER.findall(message.get("content") or "")
        if not numbers:
            reply = f"Answer with one number between 1 and {self.high}."
            return {"messages": [{"role": "user", "content": reply}], "reward": 0.0, "done": False}
        self.guesses += 1
        guess = int(numbers[-1])
        if guess == self.secret:
            return {
                "messages": [{"role": "user", "content": "Correct!"}],
                "reward": 1.0,
                "done": True,
                "metrics": {"guesses": float(self.guesses)},
            }
        hint = "Higher." if guess < self.secret else "Lower."
        return {
            "messages": [{"role": "user", "content": f"{hint} Guess again."}],
            "reward": 0.0,
            "done": False,
            "metrics": {"guesses": float(self.guesses)},
        }


def make_env(item):
    return GuessNumber(item)
