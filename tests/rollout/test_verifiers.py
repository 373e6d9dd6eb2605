"""verifiers tasksets: the real verifiers (0.4, in .venv-verifiers) runs a taskset written for
the tests (tests/verifiers_tasksets/tiny_vf: a tool server and a reward) through its own
training client against the agent proxy's token endpoint. A scripted engine gives the
replies where the test needs a tool call; the job test in tests/train runs the tiny model."""

from __future__ import annotations

import httpx
import pytest
from tiny_model import build_tool_tokenizer
from verifiers_env import TASKSETS, VERIFIERS_PYTHON, needs_verifiers

from openrft.rollout.agent_proxy import AgentCall, AgentProxy
from openrft.rollout.agents import calls_of_branch
from openrft.rollout.verifiers_env import (
    TASK_KEY,
    VerifiersSettings,
    VerifiersWorker,
    episode_of,
    task_examples,
)
from openrft.types import Completion, SamplingParams

END = "<|im_end|>"
CALL = '<tool_call>\n{"name": "calc_add", "arguments": {"a": 20, "b": 22}}\n</tool_call>'
BARE_CALL = '{"name": "calc_add", "arguments": {"a": 20, "b": 22}}'  # the tags dropped


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The tiny tool tokenizer with <tool_call> and </tool_call> as tokens of their own (as
    Qwen's), saved where verifiers loads its renderer from."""
    tokenizer = build_tool_tokenizer()
    tokenizer.add_tokens(["<tool_call>", "</tool_call>"])
    directory = tmp_path_factory.mktemp("vf-tokenizer")
    tokenizer.save_pretrained(directory)
    tokenizer.directory = str(directory)
    return tokenizer


class ScriptedEngine:
    """generate(): a tool call first, then the sum once a tool result is in the prompt."""

    def __init__(self, tokenizer, call=CALL):
        self.tokenizer, self.call = tokenizer, call
        self.end = tokenizer.convert_tokens_to_ids(END)
        self.served: list[tuple[tuple[int, ...], Completion]] = []

    def generate(self, prompts, params):
        assert params.logprobs  # a token-level client is always sent log-probs
        out = []
        for prompt in prompts:
            text = "The sum is 42." if "<tool_response>" in self._text(prompt) else self.call
            ids = [*self.tokenizer(text, add_special_tokens=False)["input_ids"], self.end]
            completion = Completion(tuple(ids), text, "stop", tuple(-0.25 for _ in ids))
            self.served.append((tuple(prompt), completion))
            out.append([completion])
        return out

    def _text(self, prompt):
        return self.tokenizer.decode(prompt)


def proxy_for(tokenizer, engine, max_turns=4, max_tokens=1024):
    proxy = AgentProxy(
        engine.generate,
        tokenizer,
        "model",
        SamplingParams(max_new_tokens=64),
        max_turns,
        max_tokens,
        frozenset({tokenizer.convert_tokens_to_ids(END)}),
    )
    proxy.start()
    return proxy


def worker(num_tasks=1, tokenizer=None, parser="qwen3", **args):
    return VerifiersWorker(
        VerifiersSettings(
            "tiny_vf",
            {"num_tasks": num_tasks, **args},
            VERIFIERS_PYTHON or "",
            max_turns=4,
            timeout_s=120.0,
            path=(str(TASKSETS),),
            renderer_model=tokenizer.directory if tokenizer is not None else "",
            tool_parser=parser,
        )
    )


@needs_verifiers
@pytest.mark.parametrize(
    ("parser", "call"),
    [("qwen3", CALL), ("hermes", CALL), ("hermes", BARE_CALL)],
    ids=["qwen3", "hermes", "hermes-bare-json"],
)
def test_a_tool_taskset_trains_on_exactly_what_the_policy_sampled(tokenizer, parser, call):
    """renderers' qwen3 parser, and openrft's "hermes" (the worker registers it), which
    also reads a call's bare JSON as openrft's own episodes do."""
    engine = ScriptedEngine(tokenizer, call)
    proxy = proxy_for(tokenizer, engine)
    vf = worker(num_tasks=1, tokenizer=tokenizer, parser=parser)
    try:
        examples = task_examples(vf.tasks, "tiny_vf")
        assert [e.reference_answer for e in examples] == ["42"]
        assert examples[0].metadata[TASK_KEY] == 0
        assert "What is 20 + 22?" in examples[0].messages[-1]["content"]
        groups = vf.run(proxy, examples, 2, 4)
    finally:
        vf.close()
        proxy.stop()
    assert len(groups) == 1 and len(groups[0]) == 2
    for completion in groups[0]:
        episode = completion.episode
        assert episode.finish_reason == "stop", episode.error
        assert episode.outcome["score"] == 1.0 and episode.outcome["correct"] == 1.0
        assert episode.outcome["reply_chars"] == len("The sum is 42.")
        # verifiers' DefaultRenderer renders each turn afresh (the template writes the call
        # differently from how it was sampled), so its trace has two branches: two rows,
        # each exactly a prompt the proxy was sent and the completion it gave.
        assert len(episode.turns) == 1 and len(episode.branches) == 1
        served = dict(engine.served)
        (call,), (answer,) = episode.turns, episode.branches[0].turns
        assert served[tuple(episode.prompt_token_ids)] == call.completion
        assert call.completion.logprobs == tuple(-0.25 for _ in call.completion.token_ids)
        assert served[tuple(episode.branches[0].prompt_token_ids)] == answer.completion
        assert "<tool_response>\n42" in tokenizer.decode(episode.branches[0].prompt_token_ids)
    # Two calls per episode, each served once.
    assert len(engine.served) == 4


@needs_verifiers
def test_the_token_endpoint_speaks_vllms_generate(tokenizer):
    """What verifiers' training client reads: max_model_len, token ids and log-probs in
    vLLM's shape; a prompt past the budget is a 400, and the limit is marked."""
    engine = ScriptedEngine(tokenizer)
    proxy = proxy_for(tokenizer, engine, max_tokens=40)
    key = proxy.open(agents=1)
    try:
        base = proxy.url.removesuffix("v1/")
        card = httpx.get(f"{proxy.url}models").json()["data"][0]
        assert card["max_model_len"] == 40
        prompt = tokenizer("hello there", add_special_tokens=False)["input_ids"]
        headers = {"Authorization": f"Bearer {key}", "X-Session-ID": "trace-1"}
        body = {"model": "policy", "token_ids": prompt, "sampling_params": {"max_tokens": 30}}
        reply = httpx.post(f"{base}inference/v1/generate", json=body, headers=headers).json()
        choice = reply["choices"][0]
        assert choice["token_ids"] == list(engine.served[0][1].token_ids)
        assert [e["token"] for e in choice["logprobs"]["content"]] == [
            f"token_id:{t}" for t in choice["token_ids"]
        ]
        long = {**body, "token_ids": prompt * 20}
        refused = httpx.post(f"{base}inference/v1/generate", json=long, headers=headers)
        assert refused.status_code == 400
        bad = httpx.post(f"{base}inference/v1/generate", json={"token_ids": [-1]}, headers=headers)
        assert bad.status_code == 400 and "token_ids" in bad.text
        stranger = httpx.post(f"{base}inference/v1/generate", json=body)
        assert stranger.status_code == 401
    finally:
        calls = proxy.close(key)
        proxy.stop()
    assert [c.session for c in calls.calls] == ["trace-1"]
    assert calls.session_limits == {"trace-1": "length"}


def test_a_branch_must_be_made_of_served_completions():
    """Sampled spans are matched to the proxy's own records; anything else is refused."""

    def call(prompt, tokens):
        return AgentCall((), tuple(prompt), Completion(tuple(tokens), "", "stop"), {}, "s")

    first, second = call([1, 2], [3, 4]), call([1, 2, 3, 4, 9], [5])
    tokens = [1, 2, 3, 4, 9, 5]
    mask = [False, False, True, True, False, True]
    assert calls_of_branch([second, first], tokens, mask) == [first, second]
    with pytest.raises(ValueError, match="sampled tokens 5..6"):
        calls_of_branch([first], tokens, mask)
    with pytest.raises(ValueError, match="sampled tokens 2..4"):
        calls_of_branch([first, second], [1, 2, 3, 7, 9, 5], mask)
    with pytest.raises(ValueError, match="mask entries"):
        calls_of_branch([first], tokens, mask[:-1])


def test_failed_mismatched_and_missing_episodes_fail_and_are_never_rewarded():
    trace = {
        "id": "t",
        "ok": True,
        "trainable": True,
        "reward": 1.0,
        "rewards": {"correct": {"score": 1.0, "weight": 1.0, "value": 1.0}},
        "metrics": {},
        "stop_condition": "agent_completed",
        "is_truncated": False,
        "is_timeout": False,
        "num_turns": 1,
        "errors": [],
        "branches": [{"token_ids": [1, 2, 3], "sampled_mask": [0, 0, 1], "trainable": True}],
    }
    served = {"t": [AgentCall((), (1, 2), Completion((3,), "x", "stop"), {}, "t")]}
    good = episode_of({"idx": 0, "ok": True, "errors": [], "traces": [trace]}, served, {}, "")
    assert good.finish_reason == "stop" and good.outcome == {"score": 1.0, "correct": 1.0}
    failed = episode_of(
        {"idx": 0, "ok": False, "errors": ["HarnessError: boom"], "traces": [trace]}, served, {}, ""
    )
    assert failed.finish_reason == "error" and "boom" in failed.error
    mismatch = episode_of({"idx": 0, "ok": True, "errors": [], "traces": [trace]}, {}, {}, "")
    assert mismatch.finish_reason == "error" and "not a completion" in mismatch.error
    unscored = episode_of(
        {"idx": 0, "ok": True, "errors": [], "traces": [{**trace, "reward": None}]},
        served,
        {},
        "",
    )
    assert unscored.finish_reason == "error" and "no reward" in unscored.error
    missing = episode_of(None, {}, {}, "the episodes outlived their deadline (60 s)", "timeout")
    assert missing.finish_reason == "timeout" and missing.outcome is None
    limited = episode_of(
        {"idx": 0, "ok": True, "errors": [], "traces": [trace]}, served, {"t": "max_turns"}, ""
    )
    assert limited.finish_reason == "max_turns"


@needs_verifiers
def test_a_taskset_that_does_not_load_is_a_clear_error():
    from openrft.errors import RolloutError

    with pytest.raises(RolloutError, match="no_such_taskset"):
        VerifiersWorker(
            VerifiersSettings("no_such_taskset", {}, VERIFIERS_PYTHON or "", path=(str(TASKSETS),))
        )


def test_a_missing_verifiers_venv_names_the_make_target(tmp_path):
    from openrft.errors import ConfigError

    with pytest.raises(ConfigError, match="make verifiers"):
        VerifiersWorker(VerifiersSettings("tiny_vf", {}, str(tmp_path / "nope" / "python")))


@needs_verifiers
def test_closing_a_busy_worker_stops_every_process_verifiers_started(tokenizer):
    """A job that ends mid-step (stopped, failed) leaves no harness program or tool server
    behind: verifiers starts each in a session of its own, out of reach of a plain kill."""
    import threading
    import time
    from pathlib import Path

    release = threading.Event()

    class Stuck(ScriptedEngine):
        def generate(self, prompts, params):
            release.wait(60)
            return super().generate(prompts, params)

    proxy = proxy_for(tokenizer, Stuck(tokenizer))
    vf = worker(num_tasks=1, tokenizer=tokenizer)
    worker_pid = vf.process.pid
    examples = task_examples(vf.tasks, "tiny_vf")
    out = {}
    running = threading.Thread(target=lambda: out.update(groups=vf.run(proxy, examples, 2, 4)))
    running.start()

    def verifiers_processes():
        found = []
        for entry in Path("/proc").iterdir():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if entry.name.isdigit() and (b"tiny_vf" in command or b"verifiers-scripts" in command):
                found.append(int(entry.name))
        return found

    deadline = time.monotonic() + 60
    while len(verifiers_processes()) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)  # the tool servers and harness programs are up, waiting on the model
    assert len(verifiers_processes()) >= 3
    vf.close()
    release.set()
    running.join(60)
    proxy.stop()
    assert (
        not Path(f"/proc/{worker_pid}").exists()
        or b"zombie" in Path(f"/proc/{worker_pid}/status").read_bytes().lower()
    )
    time.sleep(1)
    assert verifiers_processes() == []
    episodes = [c.episode for c in out["groups"][0]]
    assert all(e.finish_reason == "error" and "exited" in e.error for e in episodes)
