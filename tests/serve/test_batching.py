"""Request batching and invocation logging of the chat server, on the tiny Llama: the batcher
on its own (real generation), then the server over HTTP with the real `openai` client."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import replace
from pathlib import Path

import httpx
import openai
import pytest
import torch

from openrft.rollout.openai_chat import parse_request
from openrft.serve.app import build_app, load_chat_model
from openrft.serve.batching import Batcher
from openrft.serve.invocations import SCHEMA, InvocationLog
from openrft.types import SamplingParams

from . import running_server

GREEDY = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)


@pytest.fixture(scope="module")
def chat(tiny_model_dir: Path):
    torch.set_num_threads(1)
    return load_chat_model(str(tiny_model_dir), device="cpu")


def _prompt(chat, text: str) -> list[int]:
    request = parse_request({"messages": [{"role": "user", "content": text}]})
    return chat.prepare(request)[0]


def _run(batcher: Batcher, requests: list[tuple[list[int], SamplingParams, bool]]):
    async def main():
        return await asyncio.gather(*(batcher.submit(*r) for r in requests))

    return asyncio.run(main())


def test_waiting_requests_that_sample_alike_share_one_batch(chat) -> None:
    batcher = Batcher(chat.generate_batch, max_prompts=16)
    prompts = [_prompt(chat, f"say the letter {c}") for c in "abcd"]
    results = _run(batcher, [(p, GREEDY, False) for p in prompts])
    assert batcher.batches_run == 1
    assert [(r.batch_id, r.batch_size) for r in results] == [(1, 4)] * 4
    # Decoding together changes nothing: each greedy reply is the one it gets alone.
    for prompt, result in zip(prompts, results, strict=True):
        alone = chat.generate(prompt, GREEDY)
        assert result.completions[0].token_ids == alone[0].token_ids


def test_seeded_or_different_requests_run_in_batches_of_their_own(chat) -> None:
    batcher = Batcher(chat.generate_batch, max_prompts=16)
    prompt = _prompt(chat, "the movie was great")
    longer = replace(GREEDY, max_new_tokens=4)
    sampled = SamplingParams(n=2, temperature=1.0, max_new_tokens=4, seed=9)
    results = _run(
        batcher,
        [
            (prompt, GREEDY, False),
            (prompt, sampled, True),  # seeded: alone, so its seed means what it says
            (prompt, longer, False),  # other parameters: another batch
            (prompt, GREEDY, False),  # joins the first batch
            (prompt, sampled, True),
        ],
    )
    assert [(r.batch_id, r.batch_size) for r in results] == [(1, 2), (2, 1), (3, 1), (1, 2), (4, 1)]
    assert results[1].completions == results[4].completions  # same seed, same completions
    assert len(results[1].completions) == 2


def test_max_prompts_caps_a_batch(chat) -> None:
    batcher = Batcher(chat.generate_batch, max_prompts=2)
    prompt = _prompt(chat, "hello")
    results = _run(batcher, [(prompt, GREEDY, False)] * 5)
    assert [r.batch_size for r in results] == [2, 2, 2, 2, 1]
    assert batcher.batches_run == 3


def test_a_failing_batch_fails_each_of_its_requests_and_the_next_one_runs(chat) -> None:
    batcher = Batcher(chat.generate_batch, max_prompts=16)
    bad = [len(chat.tokenizer) + 1000]  # a token id past the embedding table: a real IndexError

    async def main():
        first = asyncio.gather(
            batcher.submit(bad, GREEDY, False),
            batcher.submit(_prompt(chat, "hi"), GREEDY, False),
            return_exceptions=True,
        )
        failures = await first
        later = await batcher.submit(_prompt(chat, "hi"), GREEDY, False)
        return failures, later

    failures, later = asyncio.run(main())
    assert all(isinstance(f, IndexError) for f in failures)
    assert later.batch_size == 1 and later.completions


# --- over HTTP ---------------------------------------------------------------------------------


def test_concurrent_clients_are_batched_and_every_call_is_logged(chat, tmp_path: Path) -> None:
    log_path = tmp_path / "logs" / "invocations.jsonl"
    app = build_app(chat, InvocationLog(log_path), max_batch=8)
    with running_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        replies: dict[int, str] = {}
        started = threading.Barrier(6)

        def ask(index: int) -> None:
            started.wait()
            reply = client.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": f"say the letter {'abcdef'[index]}"}],
                max_tokens=48,
                temperature=0.0,
                metadata={"team": "search" if index % 2 else "ads", "index": str(index)},
            )
            replies[index] = reply.choices[0].message.content

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="tiny", messages=[], metadata={"team": "ads"})
        health = httpx.get(f"{url}/health").json()

    assert len(replies) == 6
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(records) == 7 and all(r["schema"] == SCHEMA for r in records)
    served = [r for r in records if r["error"] is None]
    assert len(served) == 6
    # Six clients, one batch at a time: those waiting behind the first batch share one.
    assert health["batches_run"] < 6 and max(r["batch"]["size"] for r in served) > 1
    for record in served:
        index = int(record["requestMetadata"]["index"])
        assert record["request"]["messages"][0]["content"].endswith("abcdef"[index])
        assert record["response"]["choices"][0]["message"]["content"] == replies[index]
        assert record["requestMetadata"]["team"] == ("search" if index % 2 else "ads")
        assert record["timing"]["total_s"] >= record["timing"]["generate_s"] > 0
    failed = next(r for r in records if r["error"] is not None)
    assert failed["error"]["status"] == 400 and failed["response"] is None
    assert failed["requestMetadata"] == {"team": "ads"}


@pytest.mark.parametrize(
    "metadata",
    [{"k": 1}, {f"k{i}": "v" for i in range(17)}, {"k": "v" * 513}, ["team"]],
)
def test_bad_metadata_is_refused(metadata) -> None:
    from openrft.rollout.openai_chat import RequestError

    with pytest.raises(RequestError, match="metadata"):
        parse_request({"messages": [{"role": "user", "content": "x"}], "metadata": metadata})


def test_bedrock_request_metadata_is_accepted() -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "requestMetadata": {"app": "demo"}}
    assert parse_request(body).metadata == {"app": "demo"}
