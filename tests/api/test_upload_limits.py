"""Uploads to the job server: refused with 413 over `--max-upload-mb` (by Content-Length, and
by a running count for a chunked body), validated at upload when their purpose is fine-tune
(the OpenAI file object's `status` / `status_details`, as `openrft data validate` sees the
file), and stored under a neutralised file name. Real servers on 127.0.0.1, the real openai
client for the /v1 file routes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from openrft.api.app import create_app
from openrft.api.server import ServerThread
from openrft.cli import main

from .helpers import api_client

GOOD = json.dumps({"messages": [{"role": "user", "content": "2+2?"}], "reference_answer": "4"})
BAD_ROLE = json.dumps({"messages": [{"role": "robot", "content": "hi"}]})
MB = 1 << 20


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerThread, str, Path]]:
    """A job server (no runner) with a 1 MB upload limit; (thread, token, data dir)."""
    data_dir = tmp_path / "data"
    app = create_app(data_dir, start_runner=False, max_upload_mb=1)
    with ServerThread(app) as thread:
        yield thread, app.state.token, data_dir


def openai_client(server: tuple[ServerThread, str, Path]) -> openai.OpenAI:
    thread, token, _ = server
    return openai.OpenAI(base_url=f"{thread.url}/v1", api_key=token, max_retries=0)


def test_an_upload_over_the_limit_is_refused_with_413(server) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        openai_client(server).files.create(file=("big.jsonl", b"a" * (MB + 1)), purpose="fine-tune")
    assert caught.value.status_code == 413
    assert "--max-upload-mb" in caught.value.message
    assert not list((server[2] / "files").glob("*"))  # nothing was stored


def test_a_chunked_upload_is_cut_off_at_the_limit(server) -> None:
    thread, token, _ = server

    def body() -> Iterator[bytes]:  # no Content-Length: only the running count can stop it
        yield b'--B\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
        for _ in range(4):
            yield b"x" * (MB // 2)
        yield b"\r\n--B--\r\n"

    with api_client(thread.url, token) as client:
        headers = {"content-type": "multipart/form-data; boundary=B"}
        reply = client.post("/api/files", content=body(), headers=headers)
    assert reply.status_code == 413
    assert "upload too large" in reply.json()["detail"]


def test_a_small_upload_still_passes(server) -> None:
    reply = openai_client(server).files.create(
        file=("train.jsonl", (GOOD + "\n").encode() * 3), purpose="fine-tune"
    )
    assert reply.status == "processed" and reply.status_details is None


def test_a_bad_jsonl_is_reported_with_its_first_bad_line(server) -> None:
    client = openai_client(server)
    data = "\n".join([GOOD, GOOD, BAD_ROLE]) + "\n"
    reply = client.files.create(file=("train.jsonl", data.encode()), purpose="fine-tune")
    assert reply.status == "error"
    assert reply.status_details.startswith("line 3: messages[0].role: unknown role 'robot'")
    # The verdict is kept: GET and the list report it too.
    assert client.files.retrieve(reply.id).status == "error"
    assert [f.status for f in client.files.list().data] == ["error"]


def test_a_file_of_letters_is_not_processed(server) -> None:
    """The 300 MB file of "a" in small: one line that is not JSON."""
    reply = openai_client(server).files.create(
        file=("a.jsonl", b"a" * (MB // 2)), purpose="fine-tune"
    )
    assert reply.status == "error"
    assert reply.status_details.startswith("line 1: not valid JSON")


def test_other_purposes_and_grader_code_are_not_validated(server) -> None:
    client = openai_client(server)
    reply = client.files.create(file=("notes.txt", b"not json"), purpose="assistants")
    assert reply.status == "processed"
    code = client.files.create(file=("reward.py", b"def reward(): ..."), purpose="fine-tune")
    assert code.status == "processed"


@pytest.mark.parametrize(
    "name", ["../../escape.jsonl", "..\\..\\escape.jsonl", "/etc/escape.jsonl"]
)
def test_path_traversal_in_the_filename_is_neutralised(server, name: str) -> None:
    _, _, data_dir = server
    reply = openai_client(server).files.create(
        file=(name, (GOOD + "\n").encode()), purpose="fine-tune"
    )
    assert reply.filename == "escape.jsonl"
    stored = list(data_dir.rglob("escape.jsonl"))
    assert stored == [data_dir / "files" / reply.id / "escape.jsonl"]
    assert not (data_dir.parent / "escape.jsonl").exists()


def test_cli_refuses_a_non_positive_limit(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["server", "--max-upload-mb", "0"]) == 1
    assert "--max-upload-mb must be positive" in capsys.readouterr().err
