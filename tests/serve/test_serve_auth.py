"""`openrft serve --api-key`: the real OpenAI client (Bearer) and the real boto3
`bedrock-runtime` client (SigV4, the key as the secret) against a server on 127.0.0.1 with the
tiny model; refusals in each API's error shape; the per-address rate limit on failures; and
the refusal to bind beyond loopback without a key.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import openai
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from openrft.cli import main
from openrft.errors import RFTError
from openrft.models.load import load_model
from openrft.serve.app import ChatModel, build_app
from openrft.serve.auth import ApiKeyAuth, FailureLimiter, check_bind, resolve_key

from . import running_server

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

KEY = "s3cret-key"
MODEL_ID = "tiny"
MESSAGES = [{"role": "user", "content": [{"text": "hi"}]}]


@pytest.fixture(scope="module")
def auth() -> ApiKeyAuth:
    return ApiKeyAuth(KEY)


@pytest.fixture(scope="module")
def url(tiny_model_dir: Path, auth: ApiKeyAuth) -> Iterator[str]:
    model, tokenizer = load_model(str(tiny_model_dir))
    with running_server(build_app(ChatModel(model.eval(), tokenizer, MODEL_ID), auth=auth)) as u:
        yield u


@pytest.fixture(autouse=True)
def fresh_limiter(auth: ApiKeyAuth) -> None:
    """Every test starts with no failures counted against 127.0.0.1 (3 allowed)."""
    auth.limiter = FailureLimiter(max_failures=3, window_s=60)


def chat(url: str, key: str) -> Any:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    return client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=2)


def bedrock(url: str, secret: str, access_key_id: str = "openrft") -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}),
    )


def converse(url: str, secret: str, access_key_id: str = "openrft") -> dict[str, Any]:
    client = bedrock(url, secret, access_key_id)
    return client.converse(modelId=MODEL_ID, messages=MESSAGES, inferenceConfig={"maxTokens": 2})


def test_openai_client_with_the_key_is_served(url: str) -> None:
    reply = chat(url, KEY)
    assert reply.choices[0].finish_reason in {"length", "stop"}


@pytest.mark.parametrize("key", ["wrong", "s3cret-kez"])
def test_openai_client_with_a_wrong_key_gets_401_and_is_logged(
    url: str, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        chat(url, key)
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"  # OpenAI's error object
    assert "refused POST /v1/chat/completions from 127.0.0.1: wrong API key" in caplog.text


def test_models_need_the_key_but_health_does_not(url: str) -> None:
    with urllib.request.urlopen(f"{url}/health") as reply:
        assert json.load(reply)["status"] == "ok"
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{url}/v1/models")
    assert caught.value.code == 401
    assert "missing API key" in json.load(caught.value)["error"]["message"]


def test_boto3_signed_with_the_key_is_served(url: str) -> None:
    reply = converse(url, KEY)
    assert reply["stopReason"] in {"max_tokens", "end_turn"}


def test_boto3_signed_with_a_wrong_secret_gets_401(url: str) -> None:
    with pytest.raises(ClientError) as caught:
        converse(url, "not-the-key")
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 401
    assert error["Error"]["Code"] == "InvalidSignatureException"  # Bedrock's error shape


def test_boto3_with_another_access_key_id_gets_401(url: str) -> None:
    with pytest.raises(ClientError) as caught:
        converse(url, KEY, access_key_id="AKIA0000")
    assert caught.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_repeated_failures_are_rate_limited(url: str) -> None:
    for _ in range(3):
        with pytest.raises(openai.AuthenticationError):
            chat(url, "guess")
    # Blocked now, even with the right key, on both APIs; /health stays open.
    with pytest.raises(openai.RateLimitError) as caught:
        chat(url, KEY)
    assert caught.value.status_code == 429
    with pytest.raises(ClientError) as throttled:
        converse(url, KEY)
    assert throttled.value.response["Error"]["Code"] == "ThrottlingException"
    with urllib.request.urlopen(f"{url}/health") as reply:
        assert reply.status == 200


def test_limiter_forgets_after_the_window() -> None:
    now = [0.0]
    limiter = FailureLimiter(max_failures=2, window_s=60, clock=lambda: now[0])
    limiter.fail("a")
    now[0] = 61.0  # the first failure has left the window
    limiter.fail("a")
    assert not limiter.blocked("a")
    limiter.fail("a")
    assert limiter.blocked("a") and not limiter.blocked("b")
    now[0] = 122.0
    assert not limiter.blocked("a")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::"])
def test_binding_beyond_loopback_without_a_key_is_refused(host: str) -> None:
    with pytest.raises(RFTError, match="--api-key"):
        check_bind(host, None)
    check_bind(host, KEY)
    check_bind("127.0.0.1", None)


def test_cli_refuses_before_loading_the_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OPENRFT_SERVE_API_KEY", raising=False)
    assert main(["serve", "--model", "no-such-model", "--host", "0.0.0.0"]) == 1
    assert "refusing to serve on 0.0.0.0 without an API key" in capsys.readouterr().err


def test_key_from_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENRFT_SERVE_API_KEY", "from-env")
    (tmp_path / "key").write_text("from-file\n")
    assert resolve_key("given", None) == "given"
    assert resolve_key(None, str(tmp_path / "key")) == "from-file"
    assert resolve_key(None, None) == "from-env"
    with pytest.raises(RFTError, match="cannot read"):
        resolve_key(None, str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(RFTError, match="empty"):  # never silently open
        resolve_key(None, str(tmp_path / "empty"))
    monkeypatch.delenv("OPENRFT_SERVE_API_KEY")
    assert resolve_key(None, None) is None
