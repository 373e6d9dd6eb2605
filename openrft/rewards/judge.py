"""LLM-as-judge graders (RLAIF): `judge` (openrft's rubrics; one call per response, or one per
group, ART RULER style) and OpenAI's `score_model` and `label_model`, on an OpenAI-compatible
endpoint (`base_url`, `model`, `api_key_env`) or a model openrft loads (`local_model`).

Owns the judge clients (HTTP with retries; local HFEngine), the grader and the spec factories;
prompts and reply parsing live in `rubrics`. Failures are typed GradeErrors; token usage is
reported per sample as the components `judge/prompt_tokens` and `judge/completion_tokens`.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol

import httpx

from openrft.errors import ModelError
from openrft.rewards.grader import Grader, clip_message
from openrft.rewards.rubrics import (
    RUBRICS,
    ReplyError,
    judge_messages,
    label_instruction,
    namespaces,
    parse_label,
    parse_score,
    parse_scores,
    score_instruction,
)
from openrft.rewards.spec import SpecContext, check_fields, get_choice, get_field
from openrft.rewards.templating import TemplateError, openai_sample, render, template_paths
from openrft.types import Grade, GradeError, GradeErrorKind, Message, Sample, SamplingParams

PROMPT_TOKENS = "judge/prompt_tokens"
COMPLETION_TOKENS = "judge/completion_tokens"
OPENAI_BASE_URL = "https://api.openai.com/v1"  # score_model/label_model with no endpoint given
BACKOFF_S = 0.5  # first retry wait; doubles per attempt
MAX_WAIT_S = 30.0  # cap on a back-off or a server's Retry-After
LOCAL_MAX_TOKENS = 512  # a local judge's cap when the spec sets none
SNIPPET = 200  # characters of a response body quoted in an error
ENDPOINT_FIELDS = {"base_url", "model", "api_key_env", "local_model", "timeout_s", "retries",
                   "concurrency"}  # fmt: skip
JUDGE_FIELDS = {"type", "name", "rubric", "criteria", "scale", "temperature", "max_tokens",
                "group_mode"}  # fmt: skip
SCORE_MODEL_FIELDS = {"type", "name", "input", "range", "sampling_params"}
LABEL_MODEL_FIELDS = {"type", "name", "input", "labels", "passing_labels", "sampling_params"}
SAMPLING_FIELDS = {"temperature", "top_p", "max_completions_tokens", "max_completion_tokens",
                   "seed", "reasoning_effort"}  # fmt: skip
ROLES = ("system", "developer", "user", "assistant")
_EMPTY = Sample(id="", messages=({"role": "assistant", "content": ""},))
SAMPLE_FIELDS = (*openai_sample(_EMPTY), "input_text")  # sample.* names a template may use


Prompts = Sequence[Sequence[Message]]  # judge requests, each a list of chat turns


@dataclass(frozen=True)
class JudgeParams:
    """Sampling for judge calls. None leaves a field to the server (an HTTP request omits it:
    reasoning models reject `temperature`); a local judge then decodes greedily."""

    temperature: float | None = 0.0
    top_p: float | None = None
    max_tokens: int | None = 256
    seed: int | None = None

    def request_fields(self) -> dict[str, Any]:
        names = ("temperature", "top_p", "seed", "max_completion_tokens")
        values = (self.temperature, self.top_p, self.seed, self.max_tokens)
        return {name: value for name, value in zip(names, values, strict=True) if value is not None}


@dataclass(frozen=True)
class JudgeCall:
    """One judge request: the reply text or why there is none, and what it cost."""

    text: str = ""
    error: GradeError | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    truncated: bool = False  # the reply stopped at max_tokens


class JudgeClient(Protocol):
    def complete(self, prompts: Prompts, params: JudgeParams) -> list[JudgeCall]:
        """One call per prompt, in order; failures are JudgeCalls with an error, not raised."""
        ...


def _failed(kind: GradeErrorKind, message: str) -> JudgeCall:
    return JudgeCall(error=GradeError(kind, clip_message(message)))


class HTTPJudgeClient:
    """POSTs to `<base_url>/chat/completions`, `concurrency` requests at a time.

    429, 5xx and connection failures are retried `retries` times with exponential back-off
    (a Retry-After header is honoured up to MAX_WAIT_S). A request that outlives `timeout_s`
    is a timeout and is not retried: a stuck judge would multiply the wait. Other 4xx answers
    (a bad key, an unknown model) are server_errors at once: retrying cannot fix them. The key
    is read from `api_key_env` per batch, so that checking a spec needs no secret.
    """

    thread_safe = True  # grades from several threads at once (openrft.train.pipeline)

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        timeout_s: float = 60.0,
        retries: int = 2,
        concurrency: int = 8,
        backoff_s: float = BACKOFF_S,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout_s, self.retries = model, timeout_s, retries
        self.concurrency, self.backoff_s, self.api_key_env = concurrency, backoff_s, api_key_env
        self.http = httpx.Client(timeout=timeout_s)  # a thread-safe connection pool

    def complete(self, prompts: Prompts, params: JudgeParams) -> list[JudgeCall]:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if self.api_key_env and not key:
            missing = f"api_key_env: the environment variable {self.api_key_env} is not set"
            return [_failed("runtime_error", missing)] * len(prompts)
        call = partial(
            self._call, params=params, auth={"authorization": f"Bearer {key}"} if key else {}
        )
        if len(prompts) <= 1 or self.concurrency == 1:
            return [call(prompt) for prompt in prompts]
        with ThreadPoolExecutor(min(self.concurrency, len(prompts))) as pool:
            return list(pool.map(call, prompts))

    def _call(
        self, messages: Sequence[Message], params: JudgeParams, auth: dict[str, str]
    ) -> JudgeCall:
        body = {"model": self.model, "messages": list(messages), **params.request_fields()}
        start = time.perf_counter()
        for attempt in range(self.retries + 1):
            call, retry, wait = self._attempt(body, auth)
            if not retry or attempt == self.retries:
                break
            time.sleep(min(MAX_WAIT_S, wait if wait is not None else self.backoff_s * 2**attempt))
        if call.error is not None and attempt:
            call = _failed(call.error.kind, f"{call.error.message} (after {attempt + 1} attempts)")
        return replace(call, latency_s=time.perf_counter() - start)

    def _attempt(
        self, body: dict[str, Any], auth: dict[str, str]
    ) -> tuple[JudgeCall, bool, float | None]:
        """One request: its outcome, whether to retry, and the server's Retry-After if any."""
        try:
            response = self.http.post(self.url, json=body, headers=auth)
        except httpx.TimeoutException:
            message = f"judge {self.url} did not answer within {self.timeout_s:g} s"
            return _failed("timeout", message), False, None
        except httpx.HTTPError as exc:  # refused or reset: a restarting server comes back
            return _failed("server_error", f"judge {self.url}: {exc!r}"), True, None
        status = response.status_code
        if status == 200:
            return read_completion(response, self.url), False, None
        message = f"judge {self.url} answered HTTP {status}: {response.text[:SNIPPET]!r}"
        transient = status == 429 or status >= 500
        return _failed("server_error", message), transient, _retry_after(response)


def read_completion(response: httpx.Response, url: str) -> JudgeCall:
    """The reply text and token usage of a chat completion body; a body that is not one is a
    server_error, a refusal (OpenAI's `refusal` field, a content filter) a judge_refusal."""
    try:
        payload = response.json()
        choice = payload["choices"][0]
        message = choice["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        snippet = response.text[:SNIPPET]
        return _failed("server_error", f"judge {url} sent no chat completion: {snippet!r}")
    usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
    tokens = {k: v for k, v in usage.items() if k in ("prompt_tokens", "completion_tokens")}
    tokens = {k: v for k, v in tokens.items() if isinstance(v, int) and v >= 0}
    if message.get("refusal") or choice.get("finish_reason") == "content_filter":
        reason = message.get("refusal") or "content filter"
        return replace(_failed("judge_refusal", f"the judge refused: {reason}"), **tokens)
    content = message.get("content")
    if not isinstance(content, str):
        return replace(_failed("server_error", f"judge {url} sent no text content"), **tokens)
    return JudgeCall(text=content, truncated=choice.get("finish_reason") == "length", **tokens)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:  # absent, or an HTTP date: use our own back-off
        return None


class LocalJudgeClient:
    """A judge model openrft loads (alias, directory or GGUF) and runs in this process with
    HFEngine: all prompts of a batch decoded together, `batch_size` at a time, one at a time
    per grader (a lock). Greedy unless a temperature is set; token counts are exact."""

    thread_safe = True  # grades from several threads at once (openrft.train.pipeline)

    def __init__(self, model_name: str, batch_size: int = 8):
        # Imported here: transformers takes seconds to import, and most graders never need it.
        from openrft.data.render import encode_prompt
        from openrft.models.load import load_model
        from openrft.rollout.hf_engine import HFEngine

        model, self.tokenizer = load_model(model_name)
        self.engine = HFEngine(model, self.tokenizer, batch_size)
        self.encode = encode_prompt
        self.chat_template = "model" if getattr(self.tokenizer, "chat_template", None) else "plain"
        self.context = getattr(model.config, "max_position_embeddings", None) or 1 << 30
        self.lock = threading.Lock()

    def complete(self, prompts: Prompts, params: JudgeParams) -> list[JudgeCall]:
        start = time.perf_counter()
        max_new = params.max_tokens or LOCAL_MAX_TOKENS
        encoded = [self._encode(prompt) for prompt in prompts]
        fits = [i for i, ids in enumerate(encoded) if len(ids) + max_new <= self.context]
        sampling = SamplingParams(
            temperature=params.temperature or 0.0,  # greedy unless asked otherwise
            top_p=1.0 if params.top_p is None else params.top_p,
            max_new_tokens=max_new,
            seed=params.seed or 0,
        )
        with self.lock:
            groups = self.engine.generate([encoded[i] for i in fits], sampling) if fits else []
        latency = (time.perf_counter() - start) / max(1, len(prompts))
        too_long = f"prompt + max_tokens {max_new} exceeds the judge's context ({self.context})"
        calls = [_failed("runtime_error", too_long)] * len(prompts)
        for index, (completion,) in zip(fits, groups, strict=True):
            calls[index] = JudgeCall(
                completion.text,
                prompt_tokens=len(encoded[index]),
                completion_tokens=len(completion.token_ids),
                truncated=completion.finish_reason == "length",
            )
        return [replace(call, latency_s=latency) for call in calls]

    def _encode(self, prompt: Sequence[Message]) -> list[int]:
        # Chat templates rarely know OpenAI's "developer" role; it means "system".
        turns = [{**m, "role": "system" if m["role"] == "developer" else m["role"]} for m in prompt]
        return self.encode(turns, self.tokenizer, self.chat_template)


BuildPrompt = Callable[[Sequence[Sample]], list[Message]]  # raises TemplateError
ReadReply = Callable[[str, int], list[float]]  # reply, sample count -> scores; raises ReplyError


class JudgeGrader:
    """Scores samples with a judge model: one call per sample, or with `relative` one call per
    example, whose samples the judge sees together and scores relative to each other.

    Components: {name: score, judge/prompt_tokens, judge/completion_tokens}. A failed sample
    keeps its token components (judging it cost tokens too); the samples of a group call are
    each charged an equal share of its tokens and latency.
    """

    def __init__(
        self,
        name: str,
        client: JudgeClient,
        params: JudgeParams,
        prompt: BuildPrompt,
        read: ReadReply,
        relative: bool = False,
    ):
        self.name, self.client, self.params = name, client, params
        self.prompt, self.read, self.relative = prompt, read, relative
        self.thread_safe = bool(getattr(client, "thread_safe", False))

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        groups: dict[str, list[int]] = {}
        for index, sample in enumerate(samples):
            # A sample with no example id is a group of its own.
            key = (sample.example_id or sample.id) if self.relative else str(index)
            groups.setdefault(key, []).append(index)
        grades: list[Grade] = [Grade.failed("runtime_error", "not graded")] * len(samples)
        prompts, members = [], []
        for indices in groups.values():
            try:
                prompts.append(self.prompt([samples[i] for i in indices]))
                members.append(indices)
            except TemplateError as exc:
                for i in indices:
                    grades[i] = Grade.failed("parse_error", clip_message(f"judge prompt: {exc}"))
        calls = self.client.complete(prompts, self.params) if prompts else []
        for indices, call in zip(members, calls, strict=True):
            for i, grade in zip(indices, self._grades(call, len(indices)), strict=True):
                grades[i] = grade
        return grades

    def _grades(self, call: JudgeCall, count: int) -> list[Grade]:
        share = {PROMPT_TOKENS: call.prompt_tokens / count}
        share[COMPLETION_TOKENS] = call.completion_tokens / count
        latency, error = call.latency_s / count, call.error
        if error is None:
            try:
                scores = self.read(call.text, count)
                return [Grade(s, {self.name: s, **share}, latency_s=latency) for s in scores]
            except ReplyError as exc:
                cut = " (the reply hit max_tokens: raise max_tokens)" if call.truncated else ""
                error = GradeError(exc.kind, clip_message(f"{exc}{cut}"))
        return [Grade(None, share, error, latency) for _ in range(count)]


# --- specs --------------------------------------------------------------------------------------


def judge_from_spec(spec: Mapping[str, Any], ctx: SpecContext) -> Grader:
    """`judge`: a shipped rubric (or custom criteria); the scale is normalized to [0, 1]."""
    check_fields(spec, JUDGE_FIELDS | ENDPOINT_FIELDS, ctx)
    criteria = _template(get_field(spec, "criteria", str, ctx, ""), "criteria", ctx)
    if "rubric" not in spec and not criteria:
        raise ctx.error("rubric", f"is required: one of {', '.join(RUBRICS)}")
    rubric = RUBRICS[get_choice(spec, "rubric", tuple(RUBRICS), ctx, "custom")]
    if rubric.name == "custom" and not criteria.strip():
        raise ctx.error("criteria", 'is required with rubric = "custom"')
    scale = low, high = _pair(spec, "scale", ctx, (1.0, 10.0))
    relative = get_choice(spec, "group_mode", ("single", "relative"), ctx, "single") == "relative"
    params = JudgeParams(
        temperature=_bounded(spec, "temperature", float, ctx, 0.0, (0.0, 2.0)),
        max_tokens=_bounded(spec, "max_tokens", int, ctx, 512 if relative else 256, (1, 65536)),
    )

    def prompt(samples: Sequence[Sample]) -> list[Message]:
        return judge_messages(rubric, criteria, scale, samples, relative)

    def read(text: str, count: int) -> list[float]:
        scores = parse_scores(text, count, low, high) if relative else [parse_score(text, *scale)]
        return [(score - low) / (high - low) for score in scores]

    client = _client(spec, ctx, openai_default=False)
    return JudgeGrader(_name(spec, ctx, "judge"), client, params, prompt, read, relative)


def score_model_from_spec(spec: Mapping[str, Any], ctx: SpecContext) -> Grader:
    """OpenAI's `score_model`: the number the judge replies, checked against `range`."""
    check_fields(spec, SCORE_MODEL_FIELDS | ENDPOINT_FIELDS, ctx)
    messages = _input(spec, ctx)
    low, high = _pair(spec, "range", ctx, (0.0, 1.0))
    prompt = partial(_render_input, messages, score_instruction(low, high))

    def read(text: str, count: int) -> list[float]:
        return [parse_score(text, low, high)]

    client = _client(spec, ctx, openai_default=True)
    return JudgeGrader(_name(spec, ctx, "score_model"), client, _sampling(spec, ctx), prompt, read)


def label_model_from_spec(spec: Mapping[str, Any], ctx: SpecContext) -> Grader:
    """OpenAI's `label_model`: 1.0 when the judge's label is one of `passing_labels`."""
    check_fields(spec, LABEL_MODEL_FIELDS | ENDPOINT_FIELDS, ctx)
    messages = _input(spec, ctx)
    labels = _labels(spec, "labels", ctx)
    passing = {label.casefold() for label in _labels(spec, "passing_labels", ctx)}
    if unknown := sorted(passing - {label.casefold() for label in labels}):
        raise ctx.error("passing_labels", f"{unknown} are not in labels {labels}")
    prompt = partial(_render_input, messages, label_instruction(labels))

    def read(text: str, count: int) -> list[float]:
        return [1.0 if parse_label(text, labels).casefold() in passing else 0.0]

    client = _client(spec, ctx, openai_default=True)
    return JudgeGrader(_name(spec, ctx, "label_model"), client, _sampling(spec, ctx), prompt, read)


GRADER_TYPES: dict[str, Callable[[Mapping[str, Any], SpecContext], Grader]] = {
    "judge": judge_from_spec,
    "score_model": score_model_from_spec,
    "label_model": label_model_from_spec,
}


def _client(spec: Mapping[str, Any], ctx: SpecContext, openai_default: bool) -> JudgeClient:
    """The endpoint fields: base_url (+ model, api_key_env) or local_model, never both."""
    base_url = get_field(spec, "base_url", str, ctx, None)
    local = get_field(spec, "local_model", str, ctx, None)
    timeout_s = _bounded(spec, "timeout_s", float, ctx, ctx.timeout_s, (0.001, 3600.0))
    retries = _bounded(spec, "retries", int, ctx, 2, (0, 10))
    concurrency = _bounded(spec, "concurrency", int, ctx, 8, (1, 256))
    if base_url is not None and local is not None:
        raise ctx.error("local_model", "give base_url (a server) or local_model, not both")
    if local is not None:
        try:
            return LocalJudgeClient(local, batch_size=concurrency)
        except ModelError as exc:
            raise ctx.error("local_model", str(exc)) from exc
    if base_url is None and not openai_default:
        raise ctx.error("base_url", "is required (an OpenAI-compatible server), or set local_model")
    key_env = get_field(spec, "api_key_env", str, ctx, None if base_url else "OPENAI_API_KEY")
    base_url = base_url or OPENAI_BASE_URL
    if not re.match(r"https?://[^/\s]+", base_url):
        raise ctx.error("base_url", f"must be an http(s) URL (http://host:8000/v1): {base_url!r}")
    if key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key_env):
        raise ctx.error("api_key_env", f"must name an environment variable, got {key_env!r:.40}")
    model = get_field(spec, "model", str, ctx)  # the name the server serves the judge under
    return HTTPJudgeClient(base_url, model, key_env, timeout_s, retries, concurrency)


def _name(spec: Mapping[str, Any], ctx: SpecContext, default: str) -> str:
    if not (name := get_field(spec, "name", str, ctx, default)).strip():
        raise ctx.error("name", "must not be empty")
    return name


def _bounded(spec: Mapping[str, Any], key: str, kind: type, ctx: SpecContext, default: Any,
             bounds: tuple[float, float]) -> Any:  # fmt: skip
    value = get_field(spec, key, kind, ctx, default)
    if value is not None and not bounds[0] <= value <= bounds[1]:  # also refuses NaN
        raise ctx.error(key, f"must be between {bounds[0]:g} and {bounds[1]:g}, got {value}")
    return value


def _pair(
    spec: Mapping[str, Any], key: str, ctx: SpecContext, default: tuple[float, float]
) -> tuple[float, float]:
    value = get_field(spec, key, list, ctx, list(default))
    numbers = len(value) == 2 and all(type(v) in (int, float) for v in value)  # bool is no number
    if not (numbers and math.isfinite(value[1] - value[0]) and value[0] < value[1]):
        raise ctx.error(key, f"must be [low, high] with low < high, got {value!r:.60}")
    return float(value[0]), float(value[1])


def _labels(spec: Mapping[str, Any], key: str, ctx: SpecContext) -> list[str]:
    value = get_field(spec, key, list, ctx)
    strings = value and all(isinstance(v, str) and v.strip() for v in value)
    if not strings or len({v.casefold() for v in value}) != len(value):
        raise ctx.error(key, "must list distinct non-empty strings (compared ignoring case)")
    return list(value)


def _template(text: str, key: str, ctx: SpecContext) -> str:
    """A template, its placeholders checked now (a typo must not fail every sample later)."""
    try:
        paths = template_paths(text)
    except TemplateError as exc:
        raise ctx.error(key, str(exc)) from exc
    for path in paths:
        head, _, rest = path.partition(".")
        if head == "sample" and rest.split(".")[0] not in SAMPLE_FIELDS:
            raise ctx.error(key, f"'{{{{ {path} }}}}': sample has {', '.join(SAMPLE_FIELDS)}")
    return text


def _input(spec: Mapping[str, Any], ctx: SpecContext) -> list[Message]:
    """OpenAI's `input`: [{role, content}], content a template string or text parts."""
    value = get_field(spec, "input", list, ctx)
    if not value:
        raise ctx.error("input", "must list at least one message")
    messages: list[Message] = []
    for index, entry in enumerate(value):
        where = ctx.child(f"input[{index}]")
        if not isinstance(entry, Mapping):
            raise ctx.error(f"input[{index}]", "must be a {role, content} table/object")
        check_fields(entry, {"role", "content", "type"}, where)
        role = get_choice(entry, "role", ROLES, where)
        content = entry.get("content")
        if isinstance(content, list):  # [{"type": "input_text", "text": ...}, ...]
            texts = [p.get("text") for p in content if isinstance(p, Mapping)]
            if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
                raise where.error("content", "only text parts ({type, text}) are supported")
            content = "".join(texts)
        if not isinstance(content, str):
            raise where.error("content", "must be a string or a list of text parts")
        messages.append({"role": role, "content": _template(content, "content", where)})
    return messages


def _render_input(
    templates: Sequence[Message], suffix: str, samples: Sequence[Sample]
) -> list[Message]:
    sample_ns, item = namespaces(samples[0])
    # The answer format goes at the end of the last turn: some chat templates reject a
    # system message after the first turn.
    texts = [render(m["content"], sample_ns, item) for m in templates]
    texts[-1] += suffix
    return [{"role": m["role"], "content": t} for m, t in zip(templates, texts, strict=True)]


def _sampling(spec: Mapping[str, Any], ctx: SpecContext) -> JudgeParams:
    """OpenAI's `sampling_params`; unset fields are left to the judge (OpenAI's semantics).
    reasoning_effort is accepted and ignored: not every server knows it."""
    value = get_field(spec, "sampling_params", dict, ctx, {})
    where = ctx.child("sampling_params")
    check_fields(value, SAMPLING_FIELDS, where)
    max_tokens = _bounded(value, "max_completions_tokens", int, where, None, (1, 65536))
    return JudgeParams(
        temperature=_bounded(value, "temperature", float, where, None, (0.0, 2.0)),
        top_p=_bounded(value, "top_p", float, where, None, (0.0, 1.0)),
        max_tokens=_bounded(value, "max_completion_tokens", int, where, max_tokens, (1, 65536)),
        seed=get_field(value, "seed", int, where, None),
    )
