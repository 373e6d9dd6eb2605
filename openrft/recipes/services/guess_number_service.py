"""Guess the number as an environment service written from scratch: the Python standard
library only, no openrft, to show that the remote-environment contract
(docs/remote-environments.md) is a few routes any language can serve.

    python guess_number_service.py --port 8100
    # in the job: [env] environment = "http://127.0.0.1:8100"

`openrft env serve builtin:guess_number` serves the same game from its make_env; this file is
what a team would write in its own stack.
"""

import argparse
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NUMBER = re.compile(r"-?\d+")
EPISODES = {}  # episode id -> {"secret", "high", "guesses", "turn", "last"}
LOCK = threading.Lock()


def step(episode, content):
    """The game: one guess per turn; reward 1 on the turn that finds the number."""
    numbers = NUMBER.findall(content or "")
    if not numbers:
        reply = f"Answer with one number between 1 and {episode['high']}."
        return {"messages": [{"role": "user", "content": reply}], "reward": 0.0, "done": False}
    episode["guesses"] += 1
    guess, secret = int(numbers[-1]), episode["secret"]
    metrics = {"guesses": episode["guesses"]}
    if guess == secret:
        message = {"role": "user", "content": "Correct!"}
        return {"messages": [message], "reward": 1.0, "done": True, "metrics": metrics}
    hint = "Higher." if guess < secret else "Lower."
    message = {"role": "user", "content": f"{hint} Guess again."}
    return {"messages": [message], "reward": 0.0, "done": False, "metrics": metrics}


class Handler(BaseHTTPRequestHandler):
    def answer(self, status, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"null")

    def do_GET(self):
        if self.path == "/health":
            return self.answer(200, {"status": "ok", "episodes": len(EPISODES)})
        return self.answer(404, {"error": "not found"})

    def do_POST(self):
        parts = self.path.strip("/").split("/")
        if parts == ["episodes"]:
            item = self.body()["item"]
            episode_id = uuid.uuid4().hex
            with LOCK:
                EPISODES[episode_id] = {
                    "secret": int(item["reference_answer"]),
                    "high": int(item.get("high", 100)),
                    "guesses": 0,
                    "turn": 0,
                    "last": None,
                }
            return self.answer(200, {"episode_id": episode_id, "messages": None})
        if len(parts) == 3 and parts[0] == "episodes" and parts[2] == "step":
            request = self.body()
            with LOCK:
                episode = EPISODES.get(parts[1])
                if episode is None:
                    return self.answer(404, {"error": "no such episode"})
                if request["turn"] == episode["turn"] - 1:  # a retry: the same answer again
                    return self.answer(200, episode["last"])
                if request["turn"] != episode["turn"]:
                    return self.answer(409, {"error": f"expected turn {episode['turn']}"})
                result = step(episode, request["message"].get("content"))
                episode["turn"] += 1
                episode["last"] = result
            return self.answer(200, result)
        return self.answer(404, {"error": "not found"})

    def do_DELETE(self):
        parts = self.path.strip("/").split("/")
        with LOCK:
            found = len(parts) == 2 and EPISODES.pop(parts[1], None) is not None
        return self.answer(204) if found else self.answer(404, {"error": "no such episode"})

    def log_message(self, format, *args):  # quiet: one line per request is too many
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    host, port = server.server_address[:2]
    print(f"guess-number service at http://{host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
