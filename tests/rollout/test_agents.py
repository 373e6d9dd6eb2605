"""Agents written against the OpenAI client: the proxy serves their calls (the real `openai`
client against the real server on loopback), records them, and builds rows that hold
exactly what the policy saw and sampled. A scripted engine stands in for the model where a
test needs particular replies; the job test in tests/train runs the tiny model."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from tiny_model import build_tool_tokenizer

from openrft.data.render import template_messages
from openrft.rollout.agent_proxy import AgentCall, AgentProxy
from openrft.rollout.agents import episode_from_calls, run_agent_episodes
from openrft.rollout.environment import Runner
from openrft.types import Completion, Example, SamplingParams

END = "<|im_end|>"
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        },
    },
}
CALL_TEXT = '\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'


@pytest.fixture(scope="module")
def tokenizer():
    return build_tool_tokenizer()


class ScriptedEngine:
    """The engine's generate(): replies chosen by reply(prompt text), every prompt kept."""

    def __init__(self, tokenizer, reply):
        self.tokenizer, self.reply = tokenizer, reply
        self.end = tokenizer.convert_tokens_to_ids(END)
        self.batches: list[int] = []

    def generate(self, prompts, params):
        self.batches.append(len(prompts))
        out = []
        for prompt in prompts:
            text = self.reply(self.tokenizer.decode(prompt))
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][
                : params.max_new_tokens
            ]
            reason = "length" if len(ids) == params.max_new_tokens else "stop"
            ids += [self.end] if reason == "stop" else []
            logprobs = tuple(-0.5 for _ in ids)
            out.append([Completion(tuple(ids), text, reason, logprobs)])
        return out


def proxy_for(tokenizer, engine, max_turns=4, max_tokens=2048, max_new_tokens=128):
    end = frozenset({tokenizer.convert_tokens_to_ids(END)})
    params = SamplingParams(max_new_tokens=max_new_tokens)
    return AgentProxy(engine.generate, tokenizer, "model", params, max_turns, max_tokens, end)


def run(proxy, agent, n=2, timeout_s=30.0, rows=None):
    rows = rows or [Example("r", ({"role": "user", "content": "what is 1 plus 2"},), "3")]
    try:
        return run_agent_episodes(proxy, agent, rows, n, Runner(8), timeout_s)
    finally:
        proxy.stop()


async def tool_agent(client, item):
    """A tool loop as agents write it: call, run the tools, call again (streaming)."""
    messages = list(item["messages"])
    first = await client.chat.completions.create(model="any", messages=messages, tools=[ADD])
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    messages.append(message.model_dump(exclude_none=True))
    for call in message.tool_calls:
        arguments = json.loads(call.function.arguments)
        result = str(arguments["a"] + arguments["b"])
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    stream = await client.chat.completions.create(
        model="whatever", messages=messages, tools=[ADD], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    return {"score": float(text.strip().endswith(item["reference_answer"])), "turns": 2.0}


def test_an_agents_calls_become_its_episode_token_for_token(tokenizer):
    engine = ScriptedEngine(
        tokenizer, lambda p: "the answer is 3" if "3\n</tool_resp" in p else CALL_TEXT
    )
    groups = run(proxy_for(tokenizer, engine), tool_agent)
    for completion in groups[0]:
        episode = completion.episode
        assert episode.finish_reason == "stop" and episode.error is None
        assert episode.outcome == {"score": 1.0, "turns": 2.0}
        assert [t.tool_calls for t in episode.turns] == [1, 0]
        assert episode.branches == ()  # the second call extended the first: one row
        messages = episode.messages()
        assert messages[1]["tool_calls"][0]["function"]["name"] == "add"
        assert messages[2]["role"] == "tool" and messages[2]["content"] == "3"
        # The row is the first prompt, then each call's sampled tokens and what the agent
        # added between them: exactly the second call's prompt, then its reply.
        second_prompt = (
            episode.prompt_token_ids
            + completion.token_ids[: -len(episode.turns[1].completion.token_ids)]
        )
        rendered = tokenizer.apply_chat_template(
            template_messages(messages), tools=[ADD], tokenize=False, add_generation_prompt=False
        )
        assert tokenizer.decode(list(second_prompt)).endswith("<|im_start|>assistant\n")
        assert tokenizer.decode(list(second_prompt)) in rendered
        segments = episode.segments()
        assert [s.sampled for s in segments] == [True, False, True]
        assert segments[0].logprobs == (-0.5,) * len(segments[0].token_ids)
    assert engine.batches == [2, 2]  # both agents' calls decoded together, twice


def test_a_rewritten_history_becomes_a_row_of_its_own():
    def call(prompt, sampled):
        completion = Completion(tuple(sampled), "x", "stop")
        return AgentCall(({"role": "user", "content": "q"},), tuple(prompt), completion, {})

    calls = [call([1, 2], [3, 4]), call([1, 2, 3, 4, 5, 6], [7]), call([9, 2], [8])]
    episode = episode_from_calls(calls, outcome=1.0)
    assert episode.prompt_token_ids == (1, 2)
    assert [(s.token_ids, s.sampled) for s in episode.segments()] == [
        ((3, 4), True),
        ((5, 6), False),
        ((7,), True),
    ]
    (branch,) = episode.branches  # the third call dropped the history: trained on its own
    assert branch.prompt_token_ids == (9, 2)
    assert [(s.token_ids, s.sampled) for s in branch.segments()] == [((8,), True)]
    assert episode_from_calls([], outcome=0.5).turns == ()  # no call: a reward, no tokens


def test_limits_and_failures_are_the_episodes_not_the_steps(tokenizer):
    engine = ScriptedEngine(tokenizer, lambda p: "more")

    async def chatty(client, item):
        messages = list(item["messages"])
        try:
            while True:
                reply = await client.chat.completions.create(model="m", messages=messages)
                messages += [{"role": "assistant", "content": reply.choices[0].message.content}]
                messages += [{"role": "user", "content": "go on"}]
        except Exception as error:  # the limit's 400, as an API would answer it
            assert "env.max_turns" in str(error)
            return 0.25

    async def broken(client, item):
        await client.chat.completions.create(model="m", messages=list(item["messages"]))
        raise RuntimeError("the agent's own bug")

    async def silent(client, item):
        return None

    async def slow(client, item):
        import asyncio

        await asyncio.sleep(5)
        return 1.0

    cut = run(proxy_for(tokenizer, engine, max_turns=3), chatty, n=1)[0][0].episode
    assert cut.finish_reason == "max_turns" and len(cut.turns) == 3 and cut.outcome == 0.25
    failed = run(proxy_for(tokenizer, engine), broken, n=1)[0][0].episode
    assert failed.finish_reason == "error" and "the agent's own bug" in failed.error
    assert len(failed.turns) == 1  # what it sampled is kept, though not trained
    nothing = run(proxy_for(tokenizer, engine), silent, n=1)[0][0].episode
    assert nothing.finish_reason == "error" and "returned None" in nothing.error
    late = run(proxy_for(tokenizer, engine), slow, n=1, timeout_s=0.2)[0][0].episode
    assert late.finish_reason == "timeout"


def test_the_token_budget_caps_calls_and_then_refuses_them(tokenizer):
    engine = ScriptedEngine(tokenizer, lambda p: "a b c d e f g h i j k l m n o p")
    proxy = proxy_for(tokenizer, engine, max_tokens=40, max_new_tokens=128)

    async def agent(client, item):
        messages = list(item["messages"])
        first = await client.chat.completions.create(model="m", messages=messages)
        assert first.choices[0].finish_reason == "length"  # capped by the budget's room
        messages += [{"role": "assistant", "content": first.choices[0].message.content}]
        await client.chat.completions.create(model="m", messages=messages + messages)
        return 1.0

    episode = run(proxy, agent, n=1)[0][0].episode
    assert episode.finish_reason == "error" and "env.max_episode_tokens" in episode.error
    first_call = episode.turns[0].completion
    assert len(episode.prompt_token_ids) + len(first_call.token_ids) == 40


def test_a_sync_agent_and_the_proxys_own_answers(tokenizer):
    engine = ScriptedEngine(tokenizer, lambda p: "hello")
    proxy = proxy_for(tokenizer, engine)

    def agent(client, item):  # a plain function gets a sync client
        models = client.models.list()
        assert [m.id for m in models.data] == ["policy"]
        reply = client.chat.completions.create(model="gpt-4o", messages=list(item["messages"]))
        return float(reply.choices[0].message.content == "hello")

    episodes = [c.episode for c in run(proxy, agent, n=3)[0]]
    assert [e.outcome for e in episodes] == [1.0, 1.0, 1.0]
    proxy = proxy_for(tokenizer, engine)
    url = proxy.start()
    try:
        body = {"messages": [{"role": "user", "content": "hi"}]}
        stranger = httpx.post(
            url + "chat/completions", json=body, headers={"Authorization": "Bearer x"}
        )
        assert (
            stranger.status_code == 401 and "unknown API key" in stranger.json()["error"]["message"]
        )
    finally:
        proxy.stop()


def test_external_agents_take_rollouts_call_the_model_and_report_rewards(tokenizer):
    """Agents outside openrft (another process or machine): take a rollout, call the model
    with its id as the API key (the plain openai client), report the reward. A rollout that
    is not reported in time ends with "timeout"; a late report is refused."""
    import threading

    import openai

    from openrft.rollout.agents import run_external_episodes

    engine = ScriptedEngine(tokenizer, lambda p: "four")
    proxy = proxy_for(tokenizer, engine)
    url = proxy.start()
    taken: list[str] = []

    def agent_process(limit: int) -> None:  # what a user's agent does, over HTTP only
        while len(taken) < limit:
            offer = httpx.post(url + "rollouts")
            if offer.status_code == 204:
                time.sleep(0.01)  # none offered yet: ask again
                continue
            rollout = offer.json()
            taken.append(rollout["rollout_id"])
            messages = rollout["item"]["messages"]
            # The rollout named by the API key, by a header or in the request's metadata.
            named = [
                {"api_key": rollout["api_key"]},
                {"api_key": "x", "default_headers": {"X-Rollout-Id": rollout["rollout_id"]}},
                {"api_key": "x"},
            ][len(taken) - 1]
            client = openai.OpenAI(base_url=rollout["base_url"], **named)
            metadata = {"rollout_id": rollout["rollout_id"]} if len(taken) == 3 else None
            text = client.chat.completions.create(model="m", messages=messages, metadata=metadata)
            reward = {"reward": float(text.choices[0].message.content == "four")}
            if len(taken) == 2:  # with a reward for its one model call
                reward["turn_rewards"] = [0.5]
            answer = httpx.post(f"{url}rollouts/{rollout['rollout_id']}/reward", json=reward)
            assert answer.status_code == 204

    rows = [Example("r", ({"role": "user", "content": "2 + 2?"},), "4")]
    worker = threading.Thread(target=agent_process, args=(3,))  # one of 4 is never taken
    worker.start()
    try:
        [group] = run_external_episodes(proxy, rows, 4, timeout_s=3.0)
        worker.join(10)
        late = httpx.post(f"{url}rollouts/{taken[0]}/reward", json={"reward": 1.0})
        assert late.status_code == 404  # closed with the step
    finally:
        proxy.stop()
    episodes = [c.episode for c in group]
    assert [e.finish_reason for e in episodes].count("stop") == 3
    outcomes = [e.outcome for e in episodes if e.finish_reason == "stop"]
    assert sorted(outcomes, key=str) == [1.0, 1.0, {"score": 1.0}]
    assert sorted(e.turns[0].reward is not None for e in episodes if e.turns) == [0, 0, 1]
    (late_one,) = [e for e in episodes if e.finish_reason == "timeout"]
    assert "no reward was reported" in late_one.error and late_one.turns == ()
    reported = [e for e in episodes if e.finish_reason == "stop"]
    assert all(len(e.turns) == 1 and e.turns[0].message["content"] == "four" for e in reported)


def test_an_agent_rewards_each_call_with_turn_rewards(tokenizer):
    """ "turn_rewards": one reward (or null) per model call, in call order, on the turns
    they rewarded; a list that does not fit the calls fails the episode, never scored."""
    engine = ScriptedEngine(
        tokenizer, lambda p: "the answer is 3" if "3\n</tool_resp" in p else CALL_TEXT
    )

    async def rewarding(client, item):
        outcome = await tool_agent(client, item)
        return {**outcome, "turn_rewards": [0.25, None]}

    groups = run(proxy_for(tokenizer, engine), rewarding, n=1)
    episode = groups[0][0].episode
    assert episode.outcome == {"score": 1.0, "turns": 2.0}  # the rewards split off
    assert [t.reward for t in episode.turns] == [0.25, None]

    async def miscounted(client, item):
        return {**(await tool_agent(client, item)), "turn_rewards": [1.0]}

    async def not_finite(client, item):
        await tool_agent(client, item)
        return {"turn_rewards": [float("nan"), 1.0]}

    for agent, why in ((miscounted, "one reward per model call (2)"), (not_finite, "finite")):
        episode = run(proxy_for(tokenizer, engine), agent, n=1)[0][0].episode
        assert episode.finish_reason == "error" and why in episode.error
