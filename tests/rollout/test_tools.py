"""Tools from a Python file (run in worker processes) and HTTP endpoints: schemas from type
hints, every failure a typed error result, hung tools stopped, 5xx retried."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from openrft.errors import ConfigError
from openrft.rollout.tool_calls import MalformedCall, ToolCall
from openrft.rollout.tools import ToolBox, function_schema

TOOLS_PY = '''
import asyncio, os, time
from typing import Literal
from helper import OFFSET

def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b + OFFSET

async def lookup(key: str, unit: Literal["m", "km"] = "m") -> dict:
    """Look a key up."""
    await asyncio.sleep(0)
    return {"key": key, "unit": unit}

def hang(seconds: float = 60.0) -> str:
    print("printing does not break the protocol")
    time.sleep(seconds)
    return "done"

def broken() -> str:
    raise ValueError("no such row")

def die() -> str:
    os._exit(3)

def _private():
    return 0
'''


@pytest.fixture(scope="module")
def tools_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tools")
    (folder / "helper.py").write_text("OFFSET = 0\n")
    path = folder / "tools.py"
    path.write_text(TOOLS_PY)
    return path


@pytest.fixture(scope="module")
def box(tools_file):
    box = ToolBox(tools_file, timeout_s=1.0, max_workers=2)
    yield box
    box.close()


def call(name: str, **arguments) -> ToolCall:
    return ToolCall(f"call_{name}", name, arguments)


def test_schemas_come_from_type_hints_and_docstrings(box):
    assert set(box.names) == {"multiply", "lookup", "hang", "broken", "die"}
    multiply = box.schemas["multiply"]["function"]
    assert multiply["description"] == "Multiply two integers."
    assert multiply["parameters"] == {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "description": "the first factor"},
            "b": {"type": "integer", "description": "the second factor"},
        },
        "required": ["a", "b"],
    }
    lookup = box.schemas["lookup"]["function"]["parameters"]
    assert lookup["properties"]["unit"] == {"enum": ["m", "km"]}
    assert lookup["required"] == ["key"]


def test_sync_and_async_tools_answer(box):
    assert box.call(call("multiply", a=3817, b=2944)).content == "11237248"
    result = box.call(call("lookup", key="x"))
    assert result.error is None and json.loads(result.content) == {"key": "x", "unit": "m"}


@pytest.mark.parametrize(
    ("the_call", "kind"),
    [
        (call("multiply", a=1), "bad_arguments"),  # missing b: the schema says so
        (call("multiply", a="x", b=2), "bad_arguments"),
        (call("nope"), "unknown_tool"),
        (call("broken"), "tool_error"),
        (MalformedCall("{", "not valid JSON"), "parse_error"),
    ],
)
def test_failures_become_error_results(box, the_call, kind):
    result = box.call(the_call)
    assert result.error == kind
    assert result.content.startswith(f"Error ({kind}): ")


def test_a_tool_error_names_the_line(box):
    assert "ValueError: no such row (line " in box.call(call("broken")).content


def test_a_hung_tool_is_stopped_and_the_box_goes_on(box):
    started = time.monotonic()
    result = box.call(call("hang"))
    assert result.error == "timeout"
    assert time.monotonic() - started < 10
    workers = list(box._workers)
    assert all(w.alive() for w in workers)  # the hung worker was killed and dropped
    assert box.call(call("multiply", a=2, b=3)).content == "6"


def test_a_crashing_tool_costs_one_worker(box):
    assert box.call(call("die")).error == "crashed"
    assert box.call(call("multiply", a=2, b=5)).content == "10"


def test_calls_run_concurrently(box):
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(box.call(call("hang", seconds=0.5))))
        for _ in range(2)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.content for r in results] == ["done", "done"]
    assert time.monotonic() - started < 1.5  # two workers, not one after the other


def test_row_schemas_check_arguments_but_only_known_tools_run(box):
    row = {
        "multiply": {
            "function": {
                "name": "multiply",
                "parameters": {
                    "type": "object",
                    "properties": {"a": {"type": "integer", "maximum": 10}},
                },
            }
        }
    }
    assert box.call(call("multiply", a=11, b=1), row).error == "bad_arguments"
    declared_only = {"search": {"function": {"name": "search", "parameters": {}}}}
    assert box.call(call("search"), declared_only).error == "unknown_tool"


def test_a_missing_or_empty_tools_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        ToolBox(tmp_path / "none.py")
    (tmp_path / "empty.py").write_text("import os\n_x = 1\n")
    with pytest.raises(ConfigError, match="no public functions"):
        ToolBox(tmp_path / "empty.py")
    (tmp_path / "bad.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="boom"):
        ToolBox(tmp_path / "bad.py")


def test_function_schema_of_optional_and_list_arguments():
    def search(query: str, tags: list[str] | None = None, limit: float = 1) -> str:
        """Search."""
        return query

    parameters = function_schema(search)["function"]["parameters"]
    assert parameters["properties"] == {
        "query": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "limit": {"type": "number"},
    }
    assert parameters["required"] == ["query"]


class Endpoint(BaseHTTPRequestHandler):
    failures: dict[str, int] = {}

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        left = Endpoint.failures.get(body["name"], 0)
        if left:
            Endpoint.failures[body["name"]] = left - 1
            self.send_response(503)
            self.end_headers()
            return
        answer = json.dumps({"content": f"{body['name']}:{body['arguments']['q']}"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/call"
    server.shutdown()


def test_endpoint_tools_retry_5xx_then_give_up(endpoint, monkeypatch):
    monkeypatch.setattr("openrft.rollout.tools.HTTP_BACKOFF_S", 0.01)
    box = ToolBox(endpoints={"search": endpoint, "flaky": endpoint}, timeout_s=5)
    assert box.call(call("search", q="x")).content == "search:x"
    Endpoint.failures["flaky"] = 2  # two 503s, then an answer: within the 3 tries
    assert box.call(call("flaky", q="y")).content == "flaky:y"
    Endpoint.failures["flaky"] = 5
    result = box.call(call("flaky", q="z"))
    assert result.error == "server_error" and "503" in result.content
