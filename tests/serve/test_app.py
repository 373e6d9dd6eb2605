"""The OpenAI-compatible server on the tiny Llama, driven by the real `openai` client over HTTP on
127.0.0.1: models, n, usage, stop, max_tokens, streaming, seeds, adapters and 400 errors; and
openrft's LLM-judge graders using it as their judge endpoint."""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from peft import LoraConfig, get_peft_model
from rewards._samples import make_sample
from tiny_model import make_tiny_model_dir
from transformers import AutoModelForCausalLM, AutoTokenizer

from openrft.data.render import encode_prompt
from openrft.errors import ModelError
from openrft.rewards.grader import grade_safely
from openrft.rewards.judge import GRADER_TYPES
from openrft.rewards.spec import SpecContext
from openrft.rollout.openai_chat import parse_request
from openrft.serve.app import create_app

from . import running_server

MESSAGES = [
    {"role": "system", "content": "you are a helpful assistant"},
    {"role": "user", "content": "the movie was great"},
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def app_state(tiny_model_dir: Path):
    return create_app(str(tiny_model_dir))


@pytest.fixture(scope="module")
def base_url(app_state) -> Iterator[str]:
    with running_server(app_state) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def _create(client: openai.OpenAI, **kwargs):
    return client.chat.completions.create(model="tiny", messages=MESSAGES, **kwargs)


def test_models_lists_the_served_model(client: openai.OpenAI, tiny_model_dir: Path) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [str(tiny_model_dir)]
    assert models[0].owned_by == "openrft"


def test_n_completions_with_the_openai_shape(client: openai.OpenAI, tiny_model_dir: Path) -> None:
    reply = _create(client, n=2, max_tokens=12, seed=5)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == str(tiny_model_dir) and reply.created > 0
    assert [c.index for c in reply.choices] == [0, 1]
    for choice in reply.choices:
        assert choice.message.role == "assistant"
        assert isinstance(choice.message.content, str)
        assert choice.finish_reason in ("stop", "length")


def test_usage_counts_prompt_and_completion_tokens(
    client: openai.OpenAI, tiny_model_dir: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    reply = _create(client, n=3, max_tokens=7, seed=11, temperature=1.0)
    usage = reply.usage
    assert usage.prompt_tokens == len(encode_prompt(MESSAGES, tokenizer))
    # A "length" choice used all 7 tokens, a "stop" one at most 7 (its end-of-turn included).
    capped = [c.finish_reason for c in reply.choices].count("length")
    assert 7 * capped <= usage.completion_tokens <= 21
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_max_tokens_gives_finish_reason_length(client: openai.OpenAI) -> None:
    reply = _create(client, max_tokens=4, seed=3)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 4
    newer = _create(client, max_completion_tokens=4, seed=3)  # OpenAI's current name
    assert newer.choices[0].message.content == reply.choices[0].message.content


def test_stop_strings_cut_the_text(client: openai.OpenAI) -> None:
    free = _create(client, max_tokens=40, seed=21).choices[0].message.content
    words = [m for m in re.finditer(r"[a-z]{2,}", free) if m.start() > 0]
    assert words, f"no ASCII word to stop at in {free!r}"
    stop = words[0].group(0)
    for value in (stop, [stop, "zzzz"]):  # a string or a list
        reply = _create(client, max_tokens=40, seed=21, stop=value)
        assert reply.choices[0].finish_reason == "stop"
        assert reply.choices[0].message.content == free[: free.find(stop)]


def test_seed_makes_sampling_reproducible(client: openai.OpenAI) -> None:
    def texts(seed: int | None) -> list[str]:
        reply = _create(client, n=2, max_tokens=16, temperature=1.0, seed=seed)
        return [c.message.content for c in reply.choices]

    assert texts(7) == texts(7)
    assert texts(7) != texts(8)
    assert texts(None) != texts(None)  # no seed: fresh randomness per request


def test_streaming_sends_openai_chunks(client: openai.OpenAI, base_url: str) -> None:
    plain = _create(client, n=2, max_tokens=10, seed=4)
    stream = _create(
        client, n=2, max_tokens=10, seed=4, stream=True, stream_options={"include_usage": True}
    )
    texts, reasons, usage = ["", ""], [None, None], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            reasons[choice.index] = choice.finish_reason or reasons[choice.index]
    assert texts == [c.message.content for c in plain.choices]
    assert reasons == [c.finish_reason for c in plain.choices]
    assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens
    body = {"messages": MESSAGES, "max_tokens": 3, "stream": True}
    raw = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30)
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.text.splitlines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0]"),
        ({"messages": MESSAGES, "temperature": 3}, "temperature"),
        ({"messages": MESSAGES, "n": 0}, "n"),
        ({"messages": MESSAGES, "max_tokens": "ten"}, "max_tokens"),
        ({"messages": MESSAGES, "stop": [""]}, "stop"),
        ({"messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": MESSAGES, "tools": [{"type": "function"}]}, "tools"),
        ({"messages": MESSAGES, "max_tokens": 100_000}, "messages"),  # beyond the context
    ],
)
def test_bad_requests_get_400_with_an_openai_error(base_url: str, body: dict, param: str) -> None:
    reply = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"]


def test_the_openai_client_raises_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "robot", "content": "x"}])
    assert caught.value.status_code == 400
    assert "robot" in caught.value.message


def test_non_json_bodies_and_unknown_routes(base_url: str) -> None:
    reply = httpx.post(f"{base_url}/v1/chat/completions", content=b"{nope", timeout=30)
    assert reply.status_code == 400 and "not JSON" in reply.json()["error"]["message"]
    missing = httpx.get(f"{base_url}/v1/nothing", timeout=30)
    assert missing.status_code == 404 and "error" in missing.json()


def test_content_parts_and_the_developer_role(client: openai.OpenAI) -> None:
    messages = [
        {"role": "developer", "content": "you are a helpful assistant"},
        {"role": "user", "content": [{"type": "text", "text": "the movie was great"}]},
    ]
    reply = client.chat.completions.create(model="m", messages=messages, max_tokens=5, seed=3)
    # "developer" means "system", and text parts join into one text: the same prompt.
    same = _create(client, max_tokens=5, seed=3)
    assert reply.choices[0].message.content == same.choices[0].message.content


def test_concurrent_requests_are_served_one_at_a_time(client: openai.OpenAI) -> None:
    results: list[str] = []

    def ask(seed: int) -> None:
        results.append(_create(client, max_tokens=8, seed=seed).choices[0].message.content)

    threads = [threading.Thread(target=ask, args=(seed,)) for seed in (1, 1, 2, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 4 and len(set(results)) <= 2  # same seed, same text despite overlap


def test_parse_request_defaults() -> None:
    request = parse_request({"messages": MESSAGES})
    assert request.params.n == 1 and request.params.temperature == 1.0
    assert request.params.max_new_tokens == 256 and not request.max_tokens_given
    assert request.params.stop == () and not request.stream


def test_a_peft_adapter_is_served(tiny_model_dir: Path, tmp_path: Path) -> None:
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(0)
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    app = create_app(str(tiny_model_dir), adapter=str(tmp_path / "adapter"))
    with running_server(app) as url:
        tuned = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert tuned.models.list().data[0].id.endswith("adapter")
        reply = _create(tuned, max_tokens=6, seed=1)
        assert reply.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(ModelError, match="adapter"):
        create_app(str(tiny_model_dir), adapter=str(tmp_path / "missing"))


# --- openrft's own judges on this server -------------------------------------------------------

GROUP = [make_sample(f"the answer is {40 + i}", reference="42", index=i) for i in range(3)]
JUDGE_SPECS = [
    {"type": "judge", "rubric": "reasoning", "max_tokens": 24},
    {"type": "judge", "rubric": "summarization", "max_tokens": 24, "group_mode": "relative"},
    {"type": "judge", "criteria": "Be right.", "max_tokens": 24, "temperature": 1.0},
    {"type": "score_model", "input": [{"role": "user", "content": "Rate {{ sample.output_text }}"}],
     "sampling_params": {"max_completions_tokens": 24, "temperature": 1.0, "seed": 3}},
    {"type": "label_model", "input": [{"role": "user", "content": "{{ sample.output_text }}?"}],
     "labels": ["yes", "no"], "passing_labels": ["yes"]},
]  # fmt: skip


@pytest.fixture(scope="module")
def judge_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tiny random model with room for whole judge prompts (a rubric is ~1,900 tokens of
    the tiny tokenizer; a random model needs no training for longer RoPE positions)."""
    path = make_tiny_model_dir(tmp_path_factory.mktemp("judge-model"))
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 8192}))
    with running_server(create_app(str(path))) as url:
        yield f"{url}/v1"


@pytest.mark.parametrize("spec", JUDGE_SPECS, ids=lambda spec: spec["type"])
def test_judges_on_random_text_give_typed_errors(judge_url: str, spec: dict[str, Any]) -> None:
    """Random replies never become a 0 or a NaN: a score in [0, 1] or a typed error, and the
    judge's tokens are counted either way (from the usage this server reports)."""
    build = GRADER_TYPES[spec["type"]]
    grader = build({**spec, "base_url": judge_url, "model": "tiny"}, SpecContext())
    for grade in grade_safely(grader, GROUP):
        if grade.error is None:
            assert grade.score is not None and 0.0 <= grade.score <= 1.0
        else:
            assert grade.score is None
            assert grade.error.kind in ("parse_error", "invalid_output", "judge_refusal")
        assert grade.components["judge/prompt_tokens"] > 0
        assert grade.components["judge/completion_tokens"] > 0
        assert all(math.isfinite(value) for value in grade.components.values())
