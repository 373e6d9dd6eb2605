"""The `lambda` grader against real HTTP servers on 127.0.0.1: a lambda_host-served Bedrock
handler, and scripted servers that hang, fail, retry, or answer with broken results."""

from __future__ import annotations

import asyncio
import json
import logging
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from openrft.errors import GraderError
from openrft.net import background
from openrft.rewards.grader import grade_safely
from openrft.rewards.lambda_host import make_app
from openrft.rewards.remote import GRADER_TYPES, LambdaGrader
from openrft.rewards.spec import SpecContext
from openrft.types import Grade, Sample

from ._samples import make_sample

# (request body, request number) -> (status, body: bytes as they are, else sent as JSON[, headers])
Respond = Callable[[Any, int], tuple[Any, ...]]


class ScriptedServer(ThreadingHTTPServer):
    """Answers each POST with `respond`; records bodies, headers and requests in flight."""

    daemon_threads = True  # a hanging handler must not block server_close

    def __init__(self, respond: Respond):
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.respond = respond
        self.bodies: list[Any] = []
        self.headers_seen: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = threading.Event()  # set at teardown to free hanging handlers

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and left makes the late write fail; that is expected


class _ScriptedHandler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        server = self.server
        with server.lock:
            number = len(server.bodies)
            server.bodies.append(body)
            server.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            status, payload, *extra = server.respond(body, number)
        finally:
            with server.lock:
                server.in_flight -= 1
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        for key, value in (extra[0] if extra else {}).items():
            self.send_header(key, value)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def scripted(respond: Respond) -> Iterator[tuple[ScriptedServer, str]]:
    server = ScriptedServer(respond)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def echo_scores(body: Any, number: int) -> tuple[int, Any]:
    """A correct server: score 1 when the answer equals the reference answer."""
    results = []
    for item in body:
        reference = item["metadata"]["reference_answer"]
        score = float(item["messages"][-1]["content"] == reference)
        results.append({"id": item["id"], "aggregate_reward_score": score})
    return 200, results


def lambda_grader(url: str, **fields: Any) -> LambdaGrader:
    spec = {"type": "lambda", "url": url, "backoff_s": 0.01, **fields}
    grader = GRADER_TYPES["lambda"](spec, SpecContext(source="test.toml"))
    assert isinstance(grader, LambdaGrader)
    return grader


def samples(count: int, metadata: dict[str, Any] | None = None) -> list[Sample]:
    return [
        make_sample("42" if i % 2 else "7", reference="42", metadata=metadata, index=i)
        for i in range(count)
    ]


def kinds(grades: list[Grade]) -> list[str | None]:
    return [g.error.kind if g.error else None for g in grades]


BEDROCK_HANDLER = """
def lambda_handler(event, context):
    assert context.get_remaining_time_in_millis() > 0
    results = []
    for sample in event:
        answer = sample["messages"][-1]["content"]
        assert sample["messages"][-1]["role"] == "assistant"
        correct = float(answer.strip() == sample["metadata"]["reference_answer"])
        results.append({
            "id": sample["id"],
            "aggregate_reward_score": correct,
            "metrics_list": [
                {"name": "correct", "value": correct, "type": "Reward"},
                {"name": "length", "value": len(answer), "type": "Metric"},
            ],
        })
    return results
"""


def test_grades_with_a_bedrock_handler_hosted_by_lambda_host(tmp_path: Path) -> None:
    handler = tmp_path / "bedrock_reward.py"
    handler.write_text(textwrap.dedent(BEDROCK_HANDLER))
    with background(make_app(str(handler))) as url:
        grader = lambda_grader(url, batch_size=3)
        grades = grade_safely(grader, samples(5))
    assert [g.score for g in grades] == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert grades[1].components == {"correct": 1.0, "metric/length": 2.0}
    assert all(g.error is None and g.latency_s > 0 for g in grades)
    assert grader.name == "lambda"


def test_without_metrics_list_the_component_is_the_grader_name() -> None:
    with scripted(echo_scores) as (_, url):
        grades = lambda_grader(url, name="remote_check").grade(samples(2))
    assert [g.components for g in grades] == [{"remote_check": 0.0}, {"remote_check": 1.0}]


def test_a_hanging_server_times_out_quickly() -> None:
    def hang(body: Any, number: int) -> tuple[int, Any]:
        server.release.wait(10)
        return 200, []

    with scripted(hang) as (server, url):
        start = time.perf_counter()
        grades = lambda_grader(url, timeout_s=0.5, retries=1).grade(samples(3))
        elapsed = time.perf_counter() - start
        assert len(server.bodies) == 2  # the timeout was retried once
    assert elapsed < 3
    assert kinds(grades) == ["timeout"] * 3
    message = grades[0].error.message
    assert "within 0.5 s" in message and "after 2 attempts" in message
    assert grades[0].latency_s == pytest.approx(elapsed / 3, rel=0.3)


def test_http_500_is_retried_then_server_error() -> None:
    with scripted(lambda body, n: (500, b"internal oops: db down")) as (server, url):
        grades = lambda_grader(url, retries=2).grade(samples(2))
        assert len(server.bodies) == 3
    assert kinds(grades) == ["server_error"] * 2
    message = grades[0].error.message
    assert "HTTP 500" in message and "db down" in message and "after 3 attempts" in message


def test_http_4xx_is_not_retried() -> None:
    with scripted(lambda body, n: (403, {"message": "bad token"})) as (server, url):
        grades = lambda_grader(url, retries=3).grade(samples(2))
        assert len(server.bodies) == 1
    assert kinds(grades) == ["server_error"] * 2
    assert "HTTP 403" in grades[0].error.message and "bad token" in grades[0].error.message


@pytest.mark.parametrize("status", [503, 429])
def test_a_retry_recovers_from_a_transient_failure(status: int) -> None:
    def flaky(body: Any, number: int) -> tuple[Any, ...]:
        if number == 0:
            return status, b"busy", {"Retry-After": "0"}
        return echo_scores(body, number)

    with scripted(flaky) as (server, url):
        grades = lambda_grader(url).grade(samples(2))
        assert len(server.bodies) == 2
    assert [g.score for g in grades] == [0.0, 1.0]


def test_connection_refused_is_a_server_error() -> None:
    with scripted(echo_scores) as (_, url):
        pass  # the port is free again once the server is closed
    grades = lambda_grader(url, retries=1).grade(samples(1))
    assert kinds(grades) == ["server_error"]
    assert "cannot reach" in grades[0].error.message


@pytest.mark.parametrize(
    ("payload", "kind", "fragment"),
    [
        (b"{not json", "invalid_output", "not valid JSON"),
        (b"", "invalid_output", "not valid JSON"),
        ({"results": []}, "invalid_output", "expected a JSON list"),
        ({"errorMessage": "KeyError: 'x'", "errorType": "KeyError"}, "server_error",
         "Lambda error KeyError: KeyError: 'x'"),
        ({"statusCode": 500, "body": json.dumps({"errorMessage": "boom"})}, "server_error",
         "statusCode 500: Lambda error Error: boom"),
        ({"statusCode": 200, "body": "[oops"}, "invalid_output", "body is not valid JSON"),
    ],
    ids=["malformed", "empty", "object", "lambda_error", "proxy_500", "proxy_bad_body"],
)  # fmt: skip
def test_broken_responses_fail_the_batch(payload: Any, kind: str, fragment: str) -> None:
    with scripted(lambda body, n: (200, payload)) as (_, url):
        grades = lambda_grader(url).grade(samples(2))
    assert kinds(grades) == [kind] * 2
    assert fragment in grades[0].error.message


def test_a_proxy_style_wrapper_is_unwrapped() -> None:
    def proxy(body: Any, number: int) -> tuple[int, Any]:
        _, results = echo_scores(body, number)
        return 200, {"statusCode": 200, "headers": {}, "body": json.dumps(results)}

    with scripted(proxy) as (_, url):
        grades = lambda_grader(url).grade(samples(2))
    assert [g.score for g in grades] == [0.0, 1.0]


def test_wrong_ids_fail_each_sample_and_name_the_unmatched_ids() -> None:
    def wrong_ids(body: Any, number: int) -> tuple[int, Any]:
        return 200, [{"id": f"x{i}", "aggregate_reward_score": 1.0} for i in range(len(body))]

    with scripted(wrong_ids) as (_, url):
        grader = lambda_grader(url)
        grades = grader.grade(samples(2))
    assert kinds(grades) == ["invalid_output"] * 2
    assert "id(s) not sent in this batch: 'x0', 'x1'" in grades[0].error.message
    assert grader.unmatched_results == 2


def test_fewer_results_fail_only_the_missing_samples() -> None:
    def drop_last(body: Any, number: int) -> tuple[int, Any]:
        status, results = echo_scores(body, number)
        return status, list(reversed(results[:-1]))  # order does not matter, ids do

    with scripted(drop_last) as (_, url):
        grades = lambda_grader(url).grade(samples(3))
    assert [g.score for g in grades[:2]] == [0.0, 1.0]
    assert kinds(grades) == [None, None, "invalid_output"]
    assert "no result for id 'ex-1:2'; the response had 2 entries" in grades[2].error.message


def test_an_extra_id_fails_every_sample_of_the_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def extra(body: Any, number: int) -> tuple[int, Any]:
        status, results = echo_scores(body, number)
        return status, [*results, {"id": "stranger", "aggregate_reward_score": 1.0}, 7]

    with scripted(extra) as (_, url), caplog.at_level(logging.WARNING):
        grader = lambda_grader(url)
        grades = grader.grade(samples(2))
    assert kinds(grades) == ["invalid_output", "invalid_output"]
    assert "not sent in this batch: 'stranger'" in grades[0].error.message
    assert grader.unmatched_results == 2
    assert "2 result(s) matching no sample" in caplog.text and "'stranger'" in caplog.text


def test_a_duplicated_id_fails_that_sample() -> None:
    def duplicate(body: Any, number: int) -> tuple[int, Any]:
        status, results = echo_scores(body, number)
        return status, [*results, results[0]]

    with scripted(duplicate) as (_, url):
        grades = lambda_grader(url).grade(samples(2))
    assert kinds(grades) == ["invalid_output", None]
    assert "2 results for id 'ex-1:0'" in grades[0].error.message


# Raw JSON text of one result entry for the second sample; the first is always fine.
BAD_ENTRIES = [
    ("nan", '"aggregate_reward_score": NaN', "aggregate_reward_score: score must be finite"),
    ("infinity", '"aggregate_reward_score": -Infinity', "finite"),
    ("string", '"aggregate_reward_score": "0.5"', "str '0.5'"),
    ("null", '"aggregate_reward_score": null', "NoneType"),
    ("missing", '"score": 1', "has no aggregate_reward_score"),
    ("metric_value", '"aggregate_reward_score": 1, "metrics_list": [{"name": "a", "value": "x"}]',
     "metrics_list[0] ('a').value"),
    ("metric_type", '"aggregate_reward_score": 1, "metrics_list": [{"name": "a", "value": 1, '
     '"type": "Bonus"}]', "'Reward' or 'Metric'"),
    ("metrics_not_list", '"aggregate_reward_score": 1, "metrics_list": {"a": 1}',
     "must be a list"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("entry", "fragment"), [c[1:] for c in BAD_ENTRIES], ids=[c[0] for c in BAD_ENTRIES]
)
def test_bad_scores_fail_only_their_sample(entry: str, fragment: str) -> None:
    def respond(body: Any, number: int) -> tuple[int, bytes]:
        good = f'{{"id": "{body[0]["id"]}", "aggregate_reward_score": 0.25}}'
        bad = f'{{"id": "{body[1]["id"]}", {entry}}}'
        return 200, f"[{good}, {bad}]".encode()

    with scripted(respond) as (_, url):
        grades = grade_safely(lambda_grader(url), samples(2))
    assert grades[0].score == 0.25
    assert kinds(grades) == [None, "invalid_output"]
    assert "result for id 'ex-1:1'" in grades[1].error.message
    assert fragment in grades[1].error.message


def test_concurrency_limit_is_respected() -> None:
    def slow(body: Any, number: int) -> tuple[int, Any]:
        time.sleep(0.15)
        return echo_scores(body, number)

    with scripted(slow) as (server, url):
        grades = lambda_grader(url, batch_size=1, concurrency=2).grade(samples(6))
        assert len(server.bodies) == 6
        assert server.max_in_flight == 2
    assert [g.score for g in grades] == [0.0, 1.0] * 3


def test_batch_size_splits_requests_and_keeps_order() -> None:
    with scripted(echo_scores) as (server, url):
        grades = lambda_grader(url, batch_size=3, concurrency=1).grade(samples(7))
        sizes = [len(body) for body in server.bodies]
        sent = [item["id"] for body in server.bodies for item in body]
    assert sizes == [3, 3, 1]
    assert sent == [f"ex-1:{i}" for i in range(7)]
    assert [g.score for g in grades] == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("shape", ["bedrock", "top_level"])
def test_metadata_shapes(shape: str) -> None:
    with scripted(lambda body, n: (200, [])) as (server, url):
        grader = lambda_grader(url, metadata_shape=shape)
        grader.grade(samples(1, metadata={"difficulty": "hard", "tags": [1, 2]}))
        [[item]] = server.bodies
    messages = [
        {"role": "user", "content": "What is the answer?"},
        {"role": "assistant", "content": "7"},
    ]
    if shape == "bedrock":
        metadata = {"reference_answer": "42", "difficulty": "hard", "tags": [1, 2]}
        assert item == {"id": "ex-1:0", "messages": messages, "metadata": metadata}
    else:
        metadata = {"difficulty": "hard", "tags": [1, 2]}
        expected = {"id": "ex-1:0", "messages": messages, "reference_answer": "42"}
        assert item == {**expected, "metadata": metadata}


def test_headers_with_env_values_reach_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENRFT_TEST_LAMBDA_TOKEN", "Bearer s3cret")
    headers = {"Authorization": "env:OPENRFT_TEST_LAMBDA_TOKEN", "X-Team": "rl"}
    with scripted(echo_scores) as (server, url):
        grader = lambda_grader(url, headers=headers)
        grader.grade(samples(1))
        [seen] = server.headers_seen
    assert seen["authorization"] == "Bearer s3cret" and seen["x-team"] == "rl"
    assert seen["content-type"] == "application/json"
    assert "s3cret" not in repr(grader.settings)  # secrets stay out of logs


def test_a_sample_json_cannot_carry_fails_alone() -> None:
    batch = [*samples(1), make_sample("42", reference="42", metadata={"w": float("nan")}, index=1)]
    with scripted(echo_scores) as (server, url):
        grades = lambda_grader(url).grade(batch)
        [[item]] = server.bodies
    assert item["id"] == "ex-1:0" and grades[0].score == 0.0
    assert kinds(grades) == [None, "runtime_error"]
    assert "cannot encode sample ex-1:1" in grades[1].error.message


def test_an_empty_batch_sends_nothing() -> None:
    with scripted(echo_scores) as (server, url):
        assert lambda_grader(url).grade([]) == []
        assert server.bodies == []


def test_grading_works_inside_a_running_event_loop() -> None:
    async def grade_from_async_code(grader: LambdaGrader) -> list[Grade]:
        return grader.grade(samples(2))

    with scripted(echo_scores) as (_, url):
        grades = asyncio.run(grade_from_async_code(lambda_grader(url)))
    assert [g.score for g in grades] == [0.0, 1.0]


def test_defaults() -> None:
    grader = GRADER_TYPES["lambda"]({"type": "lambda", "url": "https://x.example/"}, SpecContext())
    assert isinstance(grader, LambdaGrader)
    s = grader.settings
    assert (s.name, s.batch_size, s.concurrency, s.timeout_s, s.retries, s.backoff_s) == (
        "lambda", 16, 4, 300.0, 2, 0.5
    )  # fmt: skip
    assert s.metadata_shape == "bedrock" and dict(s.headers) == {}


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"url": None}, "url: is required"),
        ({"url": "ftp://x/"}, "url: must be an http:// or https:// URL"),
        ({"url": "http://"}, "url: must be an http:// or https:// URL"),
        ({"timeout_s": 901}, "timeout_s: must satisfy 0 < timeout_s <= 900"),
        ({"timeout_s": 0}, "timeout_s: must satisfy"),
        ({"retries": -1}, "retries: must be between 0 and 10"),
        ({"batch_size": 0}, "batch_size: must be between 1"),
        ({"concurrency": True}, "concurrency: must be an integer"),
        ({"metadata_shape": "nova"}, "metadata_shape: 'nova' is not one of: bedrock, top_level"),
        ({"timeout": 5}, "timeout: unknown field; did you mean 'timeout_s'?"),
        ({"headers": {"X-Key": "env:OPENRFT_SURELY_UNSET_VAR"}},
         "headers.X-Key: environment variable 'OPENRFT_SURELY_UNSET_VAR' is not set"),
        ({"headers": {"X-Key": 5}}, "headers.X-Key: must be a string"),
        ({"headers": {"bad name": "v"}}, "headers.bad name: is not a valid HTTP header name"),
        ({"name": " "}, "name: must not be empty"),
    ],
)  # fmt: skip
def test_spec_mistakes_name_the_field(fields: dict[str, Any], fragment: str) -> None:
    spec = {"type": "lambda", "url": "http://127.0.0.1:9/", **fields}
    spec = {k: v for k, v in spec.items() if v is not None}
    with pytest.raises(GraderError) as caught:
        GRADER_TYPES["lambda"](spec, SpecContext(source="graders/remote.toml"))
    assert str(caught.value).startswith("graders/remote.toml: ")
    assert fragment in str(caught.value)
