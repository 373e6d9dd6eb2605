"""Bedrock Runtime on `openrft serve`, driven by the real boto3 `bedrock-runtime` client over
HTTP on 127.0.0.1: Converse (text, system, inferenceConfig, stop reasons), ConverseStream (AWS
event-stream framing, parsed by botocore), InvokeModel in both body families, tool use, errors
as boto3 ClientError codes, and the invocation log `openrft data from-logs` reads.

The tiny random model's greedy reply is newlines only, which would make the stream and stop
checks vacuous: the served model's weights are redrawn larger (std 0.3), so greedy text varies
and holds words and half-characters.
"""

from __future__ import annotations

import json
import re
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from botocore.exceptions import ClientError
from tiny_model import CHATML_TOOLS, load_varied_tiny_model

from openrft.data.from_logs import rows_from_logs
from openrft.data.render import encode_prompt
from openrft.serve.app import ChatModel, build_app
from openrft.serve.bedrock_common import text_pieces
from openrft.serve.eventstream import encode_message, event_message
from openrft.serve.invocations import InvocationLog
from openrft.serve.streaming import StreamWatch
from openrft.types import Completion, SamplingParams

from . import running_server

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SYSTEM = "you are a helpful assistant"
USER = "the movie was great"
MESSAGES = [{"role": "user", "content": [{"text": USER}]}]
TOOL = {
    "toolSpec": {
        "name": "multiply",
        "description": "Multiply two integers.",
        "inputSchema": {
            "json": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            }
        },
    }
}
CALL = '<tool_call>{"name": "multiply", "arguments": {"a": 12, "b": 30}}</tool_call>'


class ScriptedChat(ChatModel):
    """The model, except that while `script` is set it "writes" that text instead of
    generating; the prompts it was given are kept."""

    script: str | None = None
    prompts: list[list[int]]
    # Held while the server generates: a streamed reply reaches its client before the
    # batch's generate call has returned, and a test that calls the engine itself waits.
    lock = threading.Lock()

    def generate_batch(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        watches: Sequence[StreamWatch | None] | None = None,
    ) -> list[list[Completion]]:
        with self.lock:
            return self._generate_batch(prompts, params, watches)

    def _generate_batch(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        watches: Sequence[StreamWatch | None] | None = None,
    ) -> list[list[Completion]]:
        self.prompts = [list(p) for p in prompts]
        if self.script is None:
            return super().generate_batch(prompts, params, watches)
        ids = self.tokenizer(self.script, add_special_tokens=False)["input_ids"]
        ids.append(self.tokenizer.eos_token_id)  # the end of the turn
        return [[Completion(tuple(ids), self.script, "stop")] for _ in prompts]


@pytest.fixture(scope="module")
def chat(tiny_model_dir: Path) -> ScriptedChat:
    model, tokenizer = load_varied_tiny_model(tiny_model_dir)
    tokenizer.chat_template = CHATML_TOOLS  # ChatML that can also show tools
    # An id like MODEL+ADAPTER paths: boto3 percent-encodes its "/" and "+" into the URL.
    return ScriptedChat(model, tokenizer, f"{tiny_model_dir}+runs/demo/final")


@pytest.fixture(scope="module")
def log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs") / "calls.jsonl"


@pytest.fixture(scope="module")
def client(chat: ScriptedChat, log_path: Path) -> Iterator[Any]:
    with running_server(build_app(chat, InvocationLog(log_path))) as url:
        yield boto3.client(
            "bedrock-runtime",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="y",
            config=Config(retries={"total_max_attempts": 1}),
        )


def converse(client: Any, chat: ChatModel, **kwargs: Any) -> dict[str, Any]:
    return client.converse(**{"modelId": chat.model_id, "messages": MESSAGES, **kwargs})


def greedy(tokens: int, **extra: Any) -> dict[str, Any]:
    return {"inferenceConfig": {"maxTokens": tokens, "temperature": 0, **extra}}


def text_of(reply: dict[str, Any]) -> str:
    return reply["output"]["message"]["content"][0]["text"]


# --- Converse ----------------------------------------------------------------------------------


def test_converse_answers_in_converse_shape(client: Any, chat: ScriptedChat) -> None:
    reply = converse(client, chat, system=[{"text": SYSTEM}], **greedy(12))
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert reply["ResponseMetadata"]["RequestId"]
    message = reply["output"]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"][0]["text"], str)
    assert reply["stopReason"] in ("end_turn", "max_tokens")
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    usage = reply["usage"]
    assert usage["inputTokens"] == len(encode_prompt(prompt, chat.tokenizer))  # system shown
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    assert isinstance(reply["metrics"]["latencyMs"], int) and reply["metrics"]["latencyMs"] >= 0
    assert chat.prompts[0] == encode_prompt(prompt, chat.tokenizer)  # as /v1 renders it


def test_max_tokens_gives_stop_reason_max_tokens(client: Any, chat: ScriptedChat) -> None:
    reply = converse(client, chat, **greedy(4))
    assert reply["stopReason"] == "max_tokens" and reply["usage"]["outputTokens"] == 4


def test_stop_sequences_cut_the_text(client: Any, chat: ScriptedChat) -> None:
    free = text_of(converse(client, chat, **greedy(30)))
    words = [m for m in re.finditer(r"[a-z]{2,}", free) if m.start() > 0]
    assert words, f"no ASCII word to stop at in {free!r}"
    stop = words[0].group(0)
    # Bedrock allows far more than OpenAI's 4 stop strings
    stops = [stop, *(f"zz{i}" for i in range(6))]
    reply = converse(client, chat, **greedy(30, stopSequences=stops))
    assert reply["stopReason"] == "stop_sequence"
    assert text_of(reply) == free[: free.find(stop)]


def test_system_blocks_and_cache_points(client: Any, chat: ScriptedChat) -> None:
    one = converse(client, chat, system=[{"text": SYSTEM}], **greedy(8))
    split = [
        {"text": "you are a "},
        {"cachePoint": {"type": "default"}},
        {"text": "helpful assistant"},
    ]
    two = converse(client, chat, system=split, **greedy(8))
    assert text_of(one) == text_of(two)  # blocks are joined; a cache point changes nothing


# --- ConverseStream ----------------------------------------------------------------------------


def test_converse_stream_deltas_join_to_the_greedy_reply(client: Any, chat: ScriptedChat) -> None:
    plain = converse(client, chat, system=[{"text": SYSTEM}], **greedy(20))
    reply = client.converse_stream(
        modelId=chat.model_id, messages=MESSAGES, system=[{"text": SYSTEM}], **greedy(20)
    )
    assert reply["ResponseMetadata"]["HTTPHeaders"]["content-type"] == (
        "application/vnd.amazon.eventstream"
    )
    events = list(reply["stream"])
    kinds = [next(iter(event)) for event in events]
    assert kinds[0] == "messageStart" and events[0]["messageStart"] == {"role": "assistant"}
    assert kinds[-3:] == ["contentBlockStop", "messageStop", "metadata"]
    deltas = [e["contentBlockDelta"] for e in events if "contentBlockDelta" in e]
    assert all(d["contentBlockIndex"] == 0 for d in deltas)
    texts = [d["delta"]["text"] for d in deltas]
    assert "".join(texts) == text_of(plain)
    assert 1 < len(texts) <= plain["usage"]["outputTokens"]  # one delta per token (at most)
    assert events[-2]["messageStop"]["stopReason"] == plain["stopReason"]
    assert events[-1]["metadata"]["usage"] == plain["usage"]
    assert events[-1]["metadata"]["metrics"]["latencyMs"] >= 0


def test_event_frames_parse_with_botocores_parser() -> None:
    frames = event_message("contentBlockDelta", {"delta": {"text": "héllo ✓"}}) + event_message(
        "messageStop", {"stopReason": "end_turn"}
    )
    buffer = EventStreamBuffer()
    parsed = []
    for index in range(len(frames)):  # byte by byte: a frame may arrive in pieces
        buffer.add_data(frames[index : index + 1])
        parsed.extend(buffer)
    assert [m.headers for m in parsed] == [
        {":event-type": name, ":content-type": "application/json", ":message-type": "event"}
        for name in ("contentBlockDelta", "messageStop")
    ]
    assert json.loads(parsed[0].payload) == {"delta": {"text": "héllo ✓"}}
    empty = encode_message({}, b"")
    assert struct.unpack(">II", empty[:8]) == (16, 0)  # prelude, its CRC, message CRC
    corrupt = bytearray(frames)
    corrupt[20] ^= 1
    with pytest.raises(ChecksumMismatch):
        buffer = EventStreamBuffer()
        buffer.add_data(bytes(corrupt))
        list(buffer)


def test_text_pieces_join_to_the_text_whatever_was_sampled(chat: ScriptedChat) -> None:
    prompt = encode_prompt([{"role": "user", "content": USER}], chat.tokenizer)
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=24, seed=3, stop=("ss",))
    with chat.lock:  # the server may still be ending an earlier test's streamed batch
        completions = chat.engine.generate([prompt], params)[0]
    for completion in completions:
        pieces = text_pieces(chat.tokenizer, completion.token_ids, completion.text)
        assert "".join(pieces) == completion.text  # half characters and stop strings included
        assert len(pieces) <= len(completion.token_ids) and all(pieces)


# --- InvokeModel -------------------------------------------------------------------------------


def invoke(client: Any, chat: ChatModel, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    reply = client.invoke_model(modelId=chat.model_id, body=json.dumps(body), **kwargs)
    assert reply["contentType"] == "application/json"
    return json.loads(reply["body"].read())


def test_invoke_model_with_an_anthropic_body(client: Any, chat: ScriptedChat) -> None:
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "system": SYSTEM,
        "messages": [{"role": "user", "content": [{"type": "text", "text": USER}]}],
        "max_tokens": 12,
        "temperature": 0,
    }
    reply = invoke(client, chat, body, contentType="application/json", accept="application/json")
    expected = converse(client, chat, system=[{"text": SYSTEM}], **greedy(12))
    assert reply["type"] == "message" and reply["role"] == "assistant"
    assert reply["id"].startswith("msg_") and reply["model"] == chat.model_id
    assert reply["content"] == [{"type": "text", "text": text_of(expected)}]
    assert reply["stop_reason"] == expected["stopReason"] and reply["stop_sequence"] is None
    assert reply["usage"] == {
        "input_tokens": expected["usage"]["inputTokens"],
        "output_tokens": expected["usage"]["outputTokens"],
    }
    free = text_of(converse(client, chat, **greedy(30)))
    stop = re.findall(r"[a-z]{2,}", free[1:])[0]
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "messages": [{"role": "user", "content": USER}],
        "max_tokens": 30,
        "temperature": 0,
        "stop_sequences": ["zzz", stop],
    }
    stopped = invoke(client, chat, body)
    assert stopped["stop_reason"] == "stop_sequence" and stopped["stop_sequence"] == stop
    assert stopped["content"][0]["text"] == free[: free.find(stop)]


def test_invoke_model_with_an_openai_body(client: Any, chat: ScriptedChat) -> None:
    body = {"messages": [{"role": "user", "content": USER}], "max_tokens": 6, "temperature": 0}
    reply = invoke(client, chat, body)
    assert reply["object"] == "chat.completion" and reply["model"] == chat.model_id
    expected = converse(client, chat, **greedy(6))
    assert reply["choices"][0]["message"]["content"] == text_of(expected)
    assert reply["usage"]["prompt_tokens"] == expected["usage"]["inputTokens"]


# --- tool use ----------------------------------------------------------------------------------


@pytest.fixture
def scripted(chat: ScriptedChat) -> Iterator[ScriptedChat]:
    chat.script = CALL
    yield chat
    chat.script = None


def test_tool_use_round_trip(client: Any, scripted: ScriptedChat) -> None:
    reply = converse(client, scripted, toolConfig={"tools": [TOOL], "toolChoice": {"auto": {}}})
    assert reply["stopReason"] == "tool_use"
    (block,) = reply["output"]["message"]["content"]
    use = block["toolUse"]
    assert use["name"] == "multiply" and use["input"] == {"a": 12, "b": 30}
    assert '"name": "multiply"' in scripted.tokenizer.decode(scripted.prompts[0])  # shown
    # the call and its result sent back, as a Bedrock client runs the loop
    messages = [
        *MESSAGES,
        reply["output"]["message"],
        {"role": "user", "content": [{"toolResult": {
            "toolUseId": use["toolUseId"], "content": [{"json": {"product": 360}}]}}]},
    ]  # fmt: skip
    scripted.script = "360"
    final = converse(client, scripted, messages=messages, toolConfig={"tools": [TOOL]})
    assert final["stopReason"] == "end_turn" and text_of(final) == "360"
    prompt = scripted.tokenizer.decode(scripted.prompts[0])
    assert '<tool_call>\n{"name": "multiply", "arguments": {"a": 12, "b": 30}}' in prompt
    assert '<tool_response>\n{"product": 360}\n</tool_response>' in prompt


def test_tool_use_streams_as_a_tool_block(client: Any, scripted: ScriptedChat) -> None:
    reply = client.converse_stream(
        modelId=scripted.model_id, messages=MESSAGES, toolConfig={"tools": [TOOL]}
    )
    events = list(reply["stream"])
    start = next(e["contentBlockStart"] for e in events if "contentBlockStart" in e)
    assert start["start"]["toolUse"]["name"] == "multiply" and start["contentBlockIndex"] == 0
    delta = next(e["contentBlockDelta"] for e in events if "contentBlockDelta" in e)
    assert json.loads(delta["delta"]["toolUse"]["input"]) == {"a": 12, "b": 30}
    assert events[-2]["messageStop"]["stopReason"] == "tool_use"


# --- errors ------------------------------------------------------------------------------------


def error_of(call: Any) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as caught:
        call()
    response = caught.value.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Message"],
    )


def test_an_unknown_model_id_is_resource_not_found(client: Any, chat: ScriptedChat) -> None:
    code, status, message = error_of(lambda: converse(client, chat, modelId="anthropic.claude"))
    assert (code, status) == ("ResourceNotFoundException", 404)
    assert chat.model_id in message  # says what is served
    stream = lambda: client.converse_stream(modelId="nope", messages=MESSAGES)  # noqa: E731
    assert error_of(stream)[0] == "ResourceNotFoundException"


IMAGE = {"image": {"format": "png", "source": {"bytes": b"\x89PNG"}}}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"messages": [{"role": "user", "content": [{"text": "look"}, IMAGE]}]},
         "messages[0].content[1]: image blocks are not supported"),
        ({"messages": [{"role": "user", "content": [{"document": {
            "format": "txt", "name": "d", "source": {"bytes": b"x"}}}]}]}, "document blocks"),
        ({"system": [{"guardContent": {"text": {"text": "x"}}}]}, "system[0]: guardContent"),
        ({"additionalModelRequestFields": {"top_k": 5}}, "additionalModelRequestFields (top_k)"),
        ({"inferenceConfig": {"temperature": 1.5}}, "inferenceConfig.temperature"),
        ({"toolConfig": {"tools": [TOOL], "toolChoice": {"any": {}}}}, "constrained decoding"),
        ({"guardrailConfig": {"guardrailIdentifier": "g", "guardrailVersion": "1"}},
         "guardrailConfig"),
        ({"inferenceConfig": {"maxTokens": 100_000}}, "context"),
    ],
)  # fmt: skip
def test_what_the_server_cannot_honour_is_a_validation_exception(
    client: Any, chat: ScriptedChat, kwargs: dict[str, Any], fragment: str
) -> None:
    code, status, message = error_of(lambda: converse(client, chat, **kwargs))
    assert (code, status) == ("ValidationException", 400)
    assert fragment in message


def test_an_empty_additional_fields_object_is_ignored(client: Any, chat: ScriptedChat) -> None:
    reply = converse(client, chat, additionalModelRequestFields={}, **greedy(3))
    assert reply["usage"]["outputTokens"] == 3


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"anthropic_version": "v", "messages": [{"role": "user", "content": "x"}]},
         "max_tokens is required"),
        ({"anthropic_version": "v", "max_tokens": 5, "tools": [],
          "messages": [{"role": "user", "content": "x"}]}, "toolConfig"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": True}, "ConverseStream"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "robot"),
    ],
)  # fmt: skip
def test_invoke_model_refusals(
    client: Any, chat: ScriptedChat, body: dict[str, Any], fragment: str
) -> None:
    code, status, message = error_of(lambda: invoke(client, chat, body))
    assert (code, status) == ("ValidationException", 400) and fragment in message


def test_invoke_model_reads_json_only(client: Any, chat: ScriptedChat) -> None:
    body = {"messages": [{"role": "user", "content": "x"}]}
    code, _, message = error_of(lambda: invoke(client, chat, body, contentType="text/plain"))
    assert code == "ValidationException" and "application/json" in message


# --- invocation log ----------------------------------------------------------------------------


def test_calls_are_logged_for_from_logs(client: Any, chat: ScriptedChat, log_path: Path) -> None:
    reply = converse(
        client,
        chat,
        system=[{"text": SYSTEM}],
        requestMetadata={"team": "bedrock-eval"},
        **greedy(5),
    )
    rows, _ = rows_from_logs([log_path], {"equals": {"team": "bedrock-eval"}}, use_responses=True)
    assert rows[-1]["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": USER},
    ]
    assert rows[-1]["reference_answer"] == text_of(reply)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    metadata = json.dumps({"team": "invoke-eval"})  # InvokeModel's is a header
    invoke(client, chat, body, requestMetadata=metadata)
    rows, _ = rows_from_logs([log_path], {"equals": {"team": "invoke-eval"}})
    assert rows[-1]["messages"] == [{"role": "user", "content": "hi"}]
    error_of(lambda: converse(client, chat, modelId="nope"))  # refused calls are logged too
    last = json.loads(log_path.read_text().splitlines()[-1])
    assert last["response"] is None and last["error"]["status"] == 404
