"""The `lambda` grader type: grading by an HTTP endpoint that speaks Bedrock's reward-Lambda
contract (a JSON list of samples in, a JSON list of `{id, aggregate_reward_score,
metrics_list}` out, matched by id).

Owns the request encoding (both metadata shapes), batching, the concurrency limit, per-call
timeouts, retries with exponential back-off, and the mapping of every way an endpoint can
fail to a typed `GradeError` (documented in docs/lambda.md). `grade` never raises for a
remote failure: each sample gets a score or a typed error.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import math
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

import httpx

from openrft.rewards.grader import Grader, InvalidOutput, check_score, clip_message
from openrft.rewards.spec import SpecContext, check_fields, get_choice, get_field
from openrft.types import GRADE_ERROR_KINDS, Grade, GradeError, Sample

log = logging.getLogger(__name__)

MetadataShape = Literal["bedrock", "top_level"]
METADATA_SHAPES: tuple[str, ...] = ("bedrock", "top_level")
MAX_TIMEOUT_S = 900.0  # AWS Lambda's 15-minute maximum
MAX_RETRIES = 10
MAX_RETRY_AFTER_S = 60.0  # a server's Retry-After is honoured up to this
SNIPPET_CHARS = 300  # characters of a response body quoted in an error message
METRIC_PREFIX = "metric/"  # components from metrics_list entries of type "Metric"
SPEC_FIELDS = {"type", "name", "url", "batch_size", "concurrency", "timeout_s", "retries",
               "backoff_s", "headers", "metadata_shape"}  # fmt: skip
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_T = TypeVar("_T")


@dataclass(frozen=True)
class LambdaSettings:
    """How to call the endpoint. `headers` hold resolved values (env: references expanded)."""

    url: str
    name: str = "lambda"
    batch_size: int = 16  # samples per request
    concurrency: int = 4  # requests in flight at once
    timeout_s: float = 300.0  # wall-clock limit per request attempt
    retries: int = 2  # extra attempts after a connection error, timeout, 5xx or 429
    backoff_s: float = 0.5  # first retry waits about this long; doubles each time (jittered)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # may hold secrets
    metadata_shape: MetadataShape = "bedrock"


class LambdaGrader:
    """Grades batches by POSTing them to a Bedrock reward-Lambda-contract endpoint.

    `unmatched_results` counts result entries whose id matched no sample of their batch;
    they are ignored with a logged warning (and named in the error of any missing sample).
    """

    thread_safe = True  # grades from several threads at once (openrft.train.pipeline)

    def __init__(self, settings: LambdaSettings):
        self.settings = settings
        self.name = settings.name
        self.unmatched_results = 0

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        if not samples:
            return []
        size = self.settings.batch_size
        batches = [list(samples[i : i + size]) for i in range(0, len(samples), size)]
        results = _run_sync(self._grade_batches(batches))
        return [grade for batch in results for grade in batch]

    async def _grade_batches(self, batches: list[list[Sample]]) -> list[list[Grade]]:
        s = self.settings
        limits = httpx.Limits(max_connections=s.concurrency)
        semaphore = asyncio.Semaphore(s.concurrency)
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(s.timeout_s), limits=limits, headers=dict(s.headers)
        ) as client:
            tasks = [self._grade_batch(client, semaphore, batch) for batch in batches]
            return list(await asyncio.gather(*tasks))

    async def _grade_batch(
        self, client: httpx.AsyncClient, semaphore: asyncio.Semaphore, batch: list[Sample]
    ) -> list[Grade]:
        grades: list[Grade | None] = [None] * len(batch)
        encoded: list[str] = []
        for index, sample in enumerate(batch):
            try:
                encoded.append(encode_item(sample, self.settings.metadata_shape))
            except (TypeError, ValueError) as exc:  # a metadata value JSON cannot carry
                message = clip_message(f"cannot encode sample {sample.id} as JSON: {exc}")
                grades[index] = Grade.failed("runtime_error", message)
        positions = [i for i, grade in enumerate(grades) if grade is None]
        if positions:
            to_send = [batch[i] for i in positions]
            async with semaphore:
                start = time.perf_counter()
                outcome = await self._post(client, ("[" + ",".join(encoded) + "]").encode())
                latency = (time.perf_counter() - start) / len(to_send)
            for i, grade in zip(positions, self._read(outcome, to_send, latency), strict=True):
                grades[i] = grade
        return [grade for grade in grades if grade is not None]

    async def _post(self, client: httpx.AsyncClient, body: bytes) -> httpx.Response | GradeError:
        """POSTs with retries; returns the first non-retryable response, or the last error."""
        s = self.settings
        headers = {"content-type": "application/json"}
        for attempt in range(s.retries + 1):
            retry_after: float | None = None
            try:
                # asyncio.timeout bounds the whole call; httpx's own timeout is per phase.
                async with asyncio.timeout(s.timeout_s):
                    response = await client.post(s.url, content=body, headers=headers)
            except (TimeoutError, httpx.TimeoutException):
                error = GradeError("timeout", f"{s.url} did not answer within {s.timeout_s:g} s")
            except httpx.HTTPError as exc:  # refused, reset, DNS, protocol errors
                error = GradeError("server_error", f"cannot reach {s.url}: {_describe(exc)}")
            else:
                if response.status_code < 500 and response.status_code != 429:
                    return response
                error = GradeError("server_error", _http_error(s.url, response))
                retry_after = _retry_after(response)
            if attempt == s.retries:
                attempts = f" (after {attempt + 1} attempts)" if attempt else ""
                return GradeError(error.kind, clip_message(error.message + attempts))
            await asyncio.sleep(self._delay(attempt, retry_after))
        raise AssertionError("unreachable: the loop returns on its last attempt")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        # Jitter spreads out the retries of many batches that failed together.
        delay = self.settings.backoff_s * 2**attempt * random.uniform(0.5, 1.5)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
        return delay

    def _read(
        self, outcome: httpx.Response | GradeError, batch: list[Sample], latency: float
    ) -> list[Grade]:
        if isinstance(outcome, GradeError):
            error = outcome
        elif not outcome.is_success:  # 4xx (3xx too: redirects are not followed)
            error = GradeError("server_error", _http_error(self.settings.url, outcome))
        else:
            payload = decode_payload(outcome.content)
            if not isinstance(payload, GradeError):
                grades, unmatched = match_results(batch, payload, self.name, latency)
                self._note_unmatched(unmatched, len(batch))
                return grades
            error = payload
        message = clip_message(error.message)
        return [Grade.failed(error.kind, message, latency) for _ in batch]

    def _note_unmatched(self, unmatched: list[str], batch_size: int) -> None:
        if unmatched:
            self.unmatched_results += len(unmatched)
            log.warning(
                "grader %r: %d result(s) matching no sample of a batch of %d failed the batch: %s",
                self.name, len(unmatched), batch_size, clip_message(", ".join(unmatched), 200),
            )  # fmt: skip


def _run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Runs a coroutine from synchronous code, even when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # grade() called from inside a running loop (a notebook, an async server): asyncio.run
    # would refuse there, so the requests get a fresh loop in a helper thread.
    with concurrent.futures.ThreadPoolExecutor(1, "lambda-grader") as pool:
        return pool.submit(asyncio.run, coro).result()


def encode_item(sample: Sample, shape: MetadataShape) -> str:
    """One request entry as JSON text (strict JSON: NaN and inf are refused)."""
    metadata = {k: v for k, v in sample.metadata.items() if k != "reference_answer"}
    item: dict[str, Any] = {"id": sample.id, "messages": [dict(m) for m in sample.messages]}
    if shape == "bedrock":
        item["metadata"] = {"reference_answer": sample.reference_answer, **metadata}
    else:
        item["reference_answer"] = sample.reference_answer
        item["metadata"] = metadata
    return json.dumps(item, ensure_ascii=False, allow_nan=False)


def decode_payload(content: bytes) -> list[Any] | GradeError:
    """The result list of a 2xx body; unwraps a proxy-style `{statusCode, body}` response."""
    try:
        payload = json.loads(content)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        return GradeError("invalid_output", f"response is not valid JSON ({exc}): {_snip(content)}")
    except RecursionError:
        return GradeError("invalid_output", f"response JSON nests too deeply: {_snip(content)}")
    if isinstance(payload, dict) and "statusCode" in payload and "body" in payload:
        return _unwrap_proxy(payload)
    return _as_results(payload)


def _unwrap_proxy(payload: dict[str, Any]) -> list[Any] | GradeError:
    status, body = payload["statusCode"], payload["body"]
    if isinstance(body, str):
        try:
            raw = base64.b64decode(body) if payload.get("isBase64Encoded") else body
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            why = "nests too deeply" if isinstance(exc, RecursionError) else exc
            if isinstance(status, int) and not 200 <= status < 300:
                return GradeError("server_error", f"statusCode {status}: {_snip(body)}")
            return GradeError("invalid_output", f"body is not valid JSON ({why}): {_snip(body)}")
    if isinstance(status, int) and not 200 <= status < 300:
        return GradeError("server_error", f"statusCode {status}: {_lambda_error(body)}")
    return _as_results(body)


def _as_results(payload: Any) -> list[Any] | GradeError:
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict) and "errorMessage" in payload:
        return GradeError("server_error", _lambda_error(payload))
    shape = f"object with keys {sorted(payload)[:8]}" if isinstance(payload, dict) else "value"
    got = f"{type(payload).__name__} {shape}: {_snip(_dumps(payload))}"
    return GradeError("invalid_output", f"expected a JSON list of results, got a {got}")


def match_results(
    batch: Sequence[Sample], results: list[Any], name: str, latency: float
) -> tuple[list[Grade], list[str]]:
    """One Grade per sample, matched by id; also the ids of entries that matched no sample."""
    wanted = Counter(sample.id for sample in batch)
    found: dict[str, list[Any]] = {}
    unmatched: list[str] = []
    for entry in results:
        entry_id = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(entry_id, str) and entry_id in wanted:
            found.setdefault(entry_id, []).append(entry)
        else:
            unmatched.append(repr(entry_id) if isinstance(entry, dict) else _snip(repr(entry)))
    hint = f"; the response had {len(results)} entries" + (
        f", unmatched ids: {', '.join(unmatched)}" if unmatched else ""
    )
    if unmatched:
        # Results for ids that were not sent: the endpoint mixed up its answers (another batch,
        # rewritten ids), so none of this response's scores can be trusted.
        message = clip_message(
            f"the response holds result(s) for id(s) not sent in this batch: "
            f"{', '.join(unmatched)}; no score of this response is used"
        )
        return [Grade.failed("invalid_output", message, latency) for _ in batch], unmatched
    grades: list[Grade] = []
    for sample in batch:
        entries = found.get(sample.id, [])
        if len(entries) > wanted[sample.id]:  # which of two results is right is unknowable
            message = f"{len(entries)} results for id {sample.id!r}"
            grades.append(Grade.failed("invalid_output", message, latency))
        elif not entries:
            message = clip_message(f"no result for id {sample.id!r}{hint}")
            grades.append(Grade.failed("invalid_output", message, latency))
        else:
            grades.append(result_to_grade(entries.pop(0), name, latency))
    return grades, unmatched


def result_to_grade(entry: Mapping[str, Any], name: str, latency: float) -> Grade:
    """A result entry as a Grade. Components: "Reward" metrics under their name, "Metric"
    ones under metric/<name>; with no metrics_list, `{name: score}` as for a bare number."""
    entry_id = entry.get("id")
    error = entry.get("error")
    if error is not None:  # openrft's lambda_host reports a per-sample failure this way
        return _reported_error(entry_id, error, latency)
    try:
        if "aggregate_reward_score" not in entry:
            raise InvalidOutput("has no aggregate_reward_score")
        try:
            score = check_score(entry["aggregate_reward_score"])
        except InvalidOutput as exc:
            raise InvalidOutput(f"aggregate_reward_score: {exc}") from exc
        components = _components(entry.get("metrics_list"))
    except InvalidOutput as exc:
        message = clip_message(f"result for id {entry_id!r}: {exc}")
        return Grade.failed("invalid_output", message, latency)
    return Grade(score=score, components=components or {name: score}, latency_s=latency)


def _components(metrics: Any) -> dict[str, float]:
    if metrics is None:
        return {}
    if not isinstance(metrics, list):
        raise InvalidOutput(f"metrics_list must be a list, got {type(metrics).__name__}")
    components: dict[str, float] = {}
    for index, metric in enumerate(metrics):
        where = f"metrics_list[{index}]"
        if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
            raise InvalidOutput(f"{where} must be an object with a string 'name'")
        kind = str(metric.get("type", "Reward")).lower()  # Bedrock templates always set it
        if kind not in ("reward", "metric"):
            raise InvalidOutput(f"{where}.type must be 'Reward' or 'Metric', got {kind!r}")
        key = metric["name"] if kind == "reward" else METRIC_PREFIX + metric["name"]
        if key in components:
            raise InvalidOutput(f"{where}: duplicate metric {key!r}")
        try:
            components[key] = check_score(metric.get("value"))
        except InvalidOutput as exc:
            raise InvalidOutput(f"{where} ({metric['name']!r}).value: {exc}") from exc
    return components


def _reported_error(entry_id: Any, error: Any, latency: float) -> Grade:
    details = error if isinstance(error, dict) else {"message": error}
    kind = details.get("kind")
    kind = kind if kind in GRADE_ERROR_KINDS else "runtime_error"
    message = clip_message(f"result for id {entry_id!r}: {details.get('message', '')}")
    return Grade.failed(kind, message, latency)


def _http_error(url: str, response: httpx.Response) -> str:
    try:
        payload = response.json()
    except (ValueError, RecursionError):  # not JSON, or nested too deeply to read
        payload = None
    detail = _lambda_error(payload) if isinstance(payload, dict) else _snip(response.content)
    return f"{url} answered HTTP {response.status_code}: {detail}"


def _lambda_error(payload: Any) -> str:
    if isinstance(payload, dict) and "errorMessage" in payload:
        kind = payload.get("errorType") or "Error"
        return clip_message(f"Lambda error {kind}: {payload['errorMessage']}")
    return _snip(payload if isinstance(payload, str | bytes) else _dumps(payload))


def _dumps(value: Any) -> str:
    """JSON text of a parsed value for an error message; json reads deeper than it writes."""
    try:
        return json.dumps(value)
    except RecursionError:
        return "<JSON nested too deeply to show>"


def _snip(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return clip_message(repr(text), SNIPPET_CHARS)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _retry_after(response: httpx.Response) -> float | None:
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:  # absent, or an HTTP date (rare for APIs; the back-off applies then)
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def lambda_from_spec(spec: Mapping[str, Any], ctx: SpecContext) -> Grader:
    """`type = "lambda"`. `ctx.timeout_s` (a per-sample default) is not used: timeout_s here
    bounds one request carrying a whole batch, so it has its own, larger default."""
    check_fields(spec, SPEC_FIELDS, ctx)
    name = get_field(spec, "name", str, ctx, "lambda")
    if not name.strip():
        raise ctx.error("name", "must not be empty")
    shape = get_choice(spec, "metadata_shape", METADATA_SHAPES, ctx, "bedrock")
    settings = LambdaSettings(
        url=_url(get_field(spec, "url", str, ctx), ctx),
        name=name,
        batch_size=_int_in(spec, "batch_size", 16, (1, 100_000), ctx),
        concurrency=_int_in(spec, "concurrency", 4, (1, 1024), ctx),
        timeout_s=_number_in(spec, "timeout_s", 300.0, MAX_TIMEOUT_S, ctx),
        retries=_int_in(spec, "retries", 2, (0, MAX_RETRIES), ctx),
        backoff_s=_number_in(spec, "backoff_s", 0.5, MAX_RETRY_AFTER_S, ctx, zero_ok=True),
        headers=_headers(get_field(spec, "headers", dict, ctx, {}), ctx.child("headers")),
        metadata_shape=cast(MetadataShape, shape),
    )
    return LambdaGrader(settings)


def _url(url: str, ctx: SpecContext) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ctx.error("url", f"must be an http:// or https:// URL with a host, got {url!r}")
    return url.strip()


def _int_in(
    spec: Mapping[str, Any], key: str, default: int, bounds: tuple[int, int], ctx: SpecContext
) -> int:
    value = get_field(spec, key, int, ctx, default)
    if not bounds[0] <= value <= bounds[1]:
        raise ctx.error(key, f"must be between {bounds[0]} and {bounds[1]}, got {value}")
    return value


def _number_in(
    spec: Mapping[str, Any],
    key: str,
    default: float,
    high: float,
    ctx: SpecContext,
    zero_ok: bool = False,
) -> float:
    value = get_field(spec, key, float, ctx, default)
    low_ok = value >= 0 if zero_ok else value > 0
    if not (low_ok and value <= high):  # also refuses NaN
        low = "0 <=" if zero_ok else "0 <"
        raise ctx.error(key, f"must satisfy {low} {key} <= {high:g}, got {value}")
    return value


def _headers(headers: dict[str, Any], ctx: SpecContext) -> dict[str, str]:
    """Header values as sent; "env:NAME" reads the environment now, so a missing secret
    stops the job at start-up rather than failing every request."""
    resolved: dict[str, str] = {}
    for key, value in headers.items():
        if not isinstance(key, str) or not _HEADER_NAME.fullmatch(key):
            raise ctx.error(str(key), "is not a valid HTTP header name")
        if not isinstance(value, str):
            raise ctx.error(key, f"must be a string, got {type(value).__name__}")
        if value.startswith("env:"):
            variable = value[4:].strip()
            if variable not in os.environ:
                raise ctx.error(key, f"environment variable {variable!r} is not set")
            value = os.environ[variable]
        if "\r" in value or "\n" in value:
            raise ctx.error(key, "must not contain line breaks")
        resolved[key] = value
    return resolved


GRADER_TYPES: dict[str, Callable[[Mapping[str, Any], SpecContext], Grader]] = {
    "lambda": lambda_from_spec,
}
