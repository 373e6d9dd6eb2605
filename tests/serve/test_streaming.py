"""Streams that leave the server while the model is still decoding: ConverseStream with the real
boto3 `bedrock-runtime` client and `stream=True` chat completions with the real `openai` client,
against `openrft serve` on 127.0.0.1 with the tiny Llama.

No timing is asserted: the served model's decoder is gated, so that decoding stops at its
third step until the test has received the first text delta and opens the gate. A server that
streamed only after generation would send nothing while the gate is shut (the test then fails
when the gate's wait gives up). The weights are redrawn larger (as in test_bedrock_runtime) so
greedy text varies and runs to the token cap.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import openai
import pytest
import torch
from botocore.config import Config
from botocore.exceptions import EventStreamError
from tiny_model import load_varied_tiny_model

from openrft.rollout.openai_chat import parse_request
from openrft.serve.app import ChatModel, build_app
from openrft.serve.batching import Batcher
from openrft.serve.invocations import InvocationLog
from openrft.serve.streaming import StreamWatch, TextDelta
from openrft.types import SamplingParams

from . import running_server

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

MESSAGES = [{"role": "user", "content": [{"text": "the movie was great"}]}]
CHAT_MESSAGES = [{"role": "user", "content": "the movie was great"}]
GATE_STEP = 3  # the decode step the gate holds
WAIT_S = 60  # how long a shut gate waits for the test before giving up


class Gate:
    """Wraps a decoder: its GATE_STEP-th step waits until `open()` (or WAIT_S); with `fail`,
    that step raises instead."""

    def __init__(self, inner: Any, fail: bool = False):
        self.inner, self.fail = inner, fail
        self.steps = 0
        self.opened = threading.Event()
        self.opened_by_test = False  # the wait ended because the test opened it

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def step(self, *args: Any) -> torch.Tensor:
        self.steps += 1
        if self.steps == GATE_STEP:
            if self.fail:
                raise RuntimeError("the decoder broke")
            self.opened_by_test = self.opened.wait(WAIT_S)
        return self.inner.step(*args)

    def open(self) -> None:
        self.opened.set()


class LockedChat(ChatModel):
    """The model, generating under `lock`: a streamed reply reaches its client before the
    batch's generate call has returned, so a test swaps the engine's decoder under it."""

    lock = threading.Lock()

    def generate_batch(self, *args: Any) -> Any:
        with self.lock:
            return super().generate_batch(*args)


@pytest.fixture(scope="module")
def chat(tiny_model_dir: Path) -> LockedChat:
    model, tokenizer = load_varied_tiny_model(tiny_model_dir)
    return LockedChat(model, tokenizer, "tiny")


@pytest.fixture(scope="module")
def log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs") / "calls.jsonl"


@pytest.fixture(scope="module")
def url(chat: ChatModel, log_path: Path) -> Iterator[str]:
    with running_server(build_app(chat, InvocationLog(log_path))) as base:
        yield base


def logged(log_path: Path, reply_id: str) -> dict[str, Any]:
    """The invocation log's record of `reply_id`, written once the request's batch has run."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        lines = log_path.read_text().splitlines() if log_path.exists() else []
        for line in lines:
            record = json.loads(line)
            if record["id"] == reply_id:
                return record
        time.sleep(0.05)
    raise AssertionError(f"{reply_id} was not logged")


@contextmanager
def gated(chat: LockedChat, fail: bool = False) -> Iterator[Gate]:
    with chat.lock:
        decoder = chat.engine.decoder
        chat.engine.decoder = gate = Gate(decoder, fail)
    try:
        yield gate
    finally:
        gate.open()
        with chat.lock:
            chat.engine.decoder = decoder


@pytest.fixture
def gate(chat: LockedChat) -> Iterator[Gate]:
    with gated(chat) as gate:
        yield gate


@pytest.fixture(scope="module")
def bedrock(url: str) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=WAIT_S * 2),
    )


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def greedy(tokens: int, **extra: Any) -> dict[str, Any]:
    return {"inferenceConfig": {"maxTokens": tokens, "temperature": 0, **extra}}


def test_converse_stream_sends_text_while_decoding(bedrock: Any, gate: Gate) -> None:
    gate.open()  # the plain call first, ungated
    plain = bedrock.converse(modelId="tiny", messages=MESSAGES, **greedy(24))
    assert plain["usage"]["outputTokens"] > GATE_STEP + 1
    gate.opened.clear()
    gate.steps = 0
    reply = bedrock.converse_stream(modelId="tiny", messages=MESSAGES, **greedy(24))
    events, texts = [], []
    for event in reply["stream"]:
        events.append(event)
        if "contentBlockDelta" in event:
            if not texts:
                # The engine cannot have finished: it is held at GATE_STEP until opened here.
                assert not gate.opened.is_set() and gate.steps <= GATE_STEP
                gate.open()
            texts.append(event["contentBlockDelta"]["delta"]["text"])
    assert gate.opened_by_test
    kinds = [next(iter(event)) for event in events]
    assert kinds[0] == "messageStart" and kinds[-3:] == [
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert "".join(texts) == plain["output"]["message"]["content"][0]["text"]
    assert len(texts) > 1
    assert events[-2]["messageStop"]["stopReason"] == plain["stopReason"] == "max_tokens"
    assert events[-1]["metadata"]["usage"] == plain["usage"]


def test_a_stop_sequence_is_never_streamed(bedrock: Any, gate: Gate) -> None:
    gate.open()
    full = bedrock.converse(modelId="tiny", messages=MESSAGES, **greedy(24))
    text = full["output"]["message"]["content"][0]["text"]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip() and text.find(stop) > 0
    cut = bedrock.converse(modelId="tiny", messages=MESSAGES, **greedy(24, stopSequences=[stop]))
    reply = bedrock.converse_stream(
        modelId="tiny", messages=MESSAGES, **greedy(24, stopSequences=[stop])
    )
    events = list(reply["stream"])
    texts = [e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e]
    assert (
        "".join(texts) == cut["output"]["message"]["content"][0]["text"] == text[: text.find(stop)]
    )
    assert events[-2]["messageStop"]["stopReason"] == "stop_sequence"


def test_openai_stream_sends_chunks_while_decoding(
    client: openai.OpenAI, gate: Gate, log_path: Path
) -> None:
    gate.open()
    kwargs: dict[str, Any] = {"model": "tiny", "messages": CHAT_MESSAGES, "max_tokens": 24}
    plain = client.chat.completions.create(n=2, seed=5, **kwargs)
    gate.opened.clear()
    gate.steps = 0
    stream = client.chat.completions.create(
        n=2, seed=5, stream=True, stream_options={"include_usage": True}, **kwargs
    )
    texts, reasons, usage, ids = ["", ""], [None, None], None, set()
    for chunk in stream:
        ids.add(chunk.id)
        usage = chunk.usage or usage
        for choice in chunk.choices:
            if choice.delta.content and not any(texts):
                assert not gate.opened.is_set() and gate.steps <= GATE_STEP
                gate.open()
            texts[choice.index] += choice.delta.content or ""
            reasons[choice.index] = choice.finish_reason or reasons[choice.index]
    assert gate.opened_by_test and len(ids) == 1
    assert texts == [choice.message.content for choice in plain.choices]
    assert reasons == [choice.finish_reason for choice in plain.choices]
    assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens
    record = logged(log_path, ids.pop())  # logged as a chat.completion, under the chunks' id
    assert [c["message"]["content"] for c in record["response"]["choices"]] == texts
    assert record["request"]["stream"] is True


def test_a_failure_mid_stream_reaches_both_clients(
    chat: LockedChat, bedrock: Any, client: openai.OpenAI
) -> None:
    with gated(chat, fail=True):
        reply = bedrock.converse_stream(modelId="tiny", messages=MESSAGES, **greedy(24))
        with pytest.raises(EventStreamError) as caught:
            list(reply["stream"])
    assert caught.value.response["Error"]["Code"] == "internalServerException"
    assert "the decoder broke" in caught.value.response["Error"]["Message"]
    with gated(chat, fail=True):
        stream = client.chat.completions.create(
            model="tiny", messages=CHAT_MESSAGES, max_tokens=24, stream=True
        )
        with pytest.raises(openai.APIError, match="the decoder broke"):
            list(stream)


def test_a_streamed_request_batches_with_others(chat: ChatModel) -> None:
    """A streamed and a plain request that sample alike still share one batch; the streamed
    one hears its text as it is decoded, a prefix of its completion."""
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
    request = parse_request({"messages": CHAT_MESSAGES})
    prompt = chat.prepare(request)[0]
    posted: list[Any] = []
    watch = StreamWatch(posted.append, chat.tokenizer, chat.engine.end_token_ids, params)
    batcher = Batcher(chat.generate_batch, max_prompts=16)

    async def main() -> list[Any]:
        futures = [
            batcher.enqueue(prompt, params, False, watch),
            batcher.enqueue(prompt, params, False),
        ]
        return await asyncio.gather(*futures)

    streamed, plain = asyncio.run(main())
    assert batcher.batches_run == 1 and streamed.batch_size == plain.batch_size == 2
    assert streamed.completions == plain.completions
    deltas = [item.text for item in posted if isinstance(item, TextDelta)]
    assert deltas and posted[-1] == streamed.completions  # the group comes last
    assert streamed.completions[0].text.startswith("".join(deltas))
