"""The objects that cross stage boundaries (data -> rollout -> rewards -> algo -> train).

Every stage takes and returns these frozen dataclasses; nothing passes string-keyed
dicts between stages. Chat messages stay in the OpenAI shape (`{"role", "content"}`)
because that is the format users upload and graders receive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict


class Message(TypedDict):
    """One chat turn in OpenAI format."""

    role: str
    content: str


# Why a completion (or an episode) ended: the end of the turn or a stop string; the token cap
# (of the turn, or an episode's token budget); an episode's turn limit or wall-clock limit;
# an environment that failed (the episode is then left out of the update, as a failed grade).
FinishReason = Literal["stop", "length", "max_turns", "timeout", "error"]

# Typed grader failure kinds, counted per step as `reward/errors/<kind>`.
GradeErrorKind = Literal[
    "parse_error",  # the grader could not parse the response or its own output
    "runtime_error",  # the grader raised
    "timeout",  # the grader did not answer in time
    "invalid_output",  # NaN, inf, a non-number, a missing or extra id
    "judge_refusal",  # an LLM judge refused to score
    "server_error",  # a remote grader answered with an HTTP error
    "worker_died",  # the grader's worker process died (killed, out of memory), retried once
]
GRADE_ERROR_KINDS: tuple[str, ...] = GradeErrorKind.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Example:
    """One dataset row: the prompt, its reference answer and every other field of the row."""

    id: str  # the row's `id`, or a stable hash of its content when it has none
    messages: tuple[Message, ...]  # system/user turns; never ends with an assistant turn
    reference_answer: Any = None  # any JSON value; None when the row has none
    metadata: Mapping[str, Any] = field(default_factory=dict)  # every other field of the row
    source: str = ""  # "path/file.jsonl:12", for error messages

    def item(self) -> dict[str, Any]:
        """The row as a user's reward function (or environment) sees it."""
        return row_item(self.id, self.messages, self.reference_answer, self.metadata)


def row_item(
    row_id: str, messages: Sequence[Message], reference_answer: Any, metadata: Mapping[str, Any]
) -> dict[str, Any]:
    """`{**metadata, "id", "messages", "reference_answer"}`: a row, every field as uploaded."""
    return {
        **metadata,
        "id": row_id,
        "messages": [dict(m) for m in messages],
        "reference_answer": reference_answer,
    }


@dataclass(frozen=True)
class SamplingParams:
    """How a rollout engine samples completions."""

    n: int = 1  # completions per prompt (the GRPO group size)
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0  # nucleus sampling mass; 1 disables it
    top_k: int = 0  # keep the k most likely tokens; 0 disables it
    max_new_tokens: int = 64  # generation cap per completion
    stop: tuple[str, ...] = ()  # stop strings; the completion text ends before them
    seed: int = 0  # seeds the sampling generator, so a step is reproducible
    logprobs: bool = False  # report each sampled token's log-prob (raw model, temperature 1)


@dataclass(frozen=True)
class Completion:
    """One generated assistant turn."""

    token_ids: tuple[int, ...]  # generated tokens, including the end-of-turn token if produced
    text: str  # decoded text without special tokens, cut before a stop string
    finish_reason: FinishReason  # "stop" (end of turn or stop string) or "length" (hit the cap)
    # The engine's log-prob of each token (raw model, temperature 1), where it reports them
    # (vLLM); the trainer corrects for its mismatch. Not part of equality: it is a measurement.
    logprobs: tuple[float, ...] | None = field(default=None, compare=False)
    # A multi-turn episode (openrft.rollout.episodes.Episode) when this completion is one:
    # then token_ids are every token after the prompt (sampled and environment), text is the
    # last assistant turn's text, and the episode holds the turns and their messages.
    episode: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class Sample:
    """What a grader scores: the prompt plus one generated assistant turn."""

    id: str  # unique per completion: "<example id>:<index in group>"
    messages: tuple[Message, ...]  # the prompt turns followed by the generated assistant turn
    reference_answer: Any = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    example_id: str = ""  # the dataset row this completion answers
    completion_tokens: int = 0  # tokens generated for this completion (0 when unknown)
    # Leading messages that are the row's prompt; None = all but the last (one assistant
    # turn). An episode's messages go on with every assistant, tool and user turn.
    prompt_messages: int | None = None

    @property
    def response(self) -> str:
        """The generated assistant text (an episode's last assistant turn)."""
        for message in reversed(self.messages):
            if message["role"] == "assistant":
                return message.get("content") or ""
        return ""

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """Every tool call the assistant made, in order (OpenAI shape)."""
        start = len(self.messages) - 1 if self.prompt_messages is None else self.prompt_messages
        return [
            call
            for message in self.messages[start:]
            if message["role"] == "assistant"
            for call in message.get("tool_calls") or ()  # type: ignore[attr-defined]
        ]

    def item(self) -> dict[str, Any]:
        """The row as a user's reward function sees it: every field, as in the dataset."""
        end = len(self.messages) - 1 if self.prompt_messages is None else self.prompt_messages
        return row_item(self.example_id, self.messages[:end], self.reference_answer, self.metadata)


@dataclass(frozen=True)
class GradeError:
    """Why a grader could not score a sample. Never turned into a silent 0."""

    kind: GradeErrorKind
    message: str


@dataclass(frozen=True)
class Grade:
    """A grader's verdict on one sample: a finite score, or an error (then score is None)."""

    score: float | None
    components: Mapping[str, float] = field(default_factory=dict)  # named reward parts/metrics
    error: GradeError | None = None
    latency_s: float = 0.0  # time the grader spent on this sample (batch time / batch size)

    @staticmethod
    def failed(kind: GradeErrorKind, message: str, latency_s: float = 0.0) -> Grade:
        return Grade(score=None, error=GradeError(kind, message), latency_s=latency_s)


@dataclass(frozen=True)
class RolloutGroup:
    """One prompt with its G completions and their grades, sampled by one policy version."""

    example: Example
    prompt_token_ids: tuple[int, ...]
    completions: tuple[Completion, ...]
    grades: tuple[Grade, ...]
    policy_version: int = 0  # the trainer's update count of the weights that sampled it


@dataclass(frozen=True)
class Segment:
    """A run of an episode's tokens after its prompt: sampled by the policy (trained) or
    added by the environment (a tool result, a user turn: context only, never trained)."""

    token_ids: tuple[int, ...]
    sampled: bool  # True: the policy sampled these tokens
    logprobs: tuple[float, ...] | None = None  # the sampler's, per token (sampled segments)


@dataclass(frozen=True)
class TrainRow:
    """One sequence as the policy update sees it: a prompt, then a response of sampled and
    environment tokens. A single-turn completion is a response of one sampled segment; a
    multi-turn episode interleaves sampled segments with environment segments. Every
    per-token field has one entry per response token (`token_ids[prompt_length:]`).

    Rows of one group share their prompt token for token, and the fast training forward
    computes it once for the group."""

    token_ids: tuple[int, ...]  # the prompt, then the response
    prompt_length: int  # the leading tokens that are prompt (never trained)
    loss_mask: tuple[bool, ...]  # per response token: sampled by the policy, so trained
    advantages: tuple[float, ...]  # per response token; 0 where loss_mask is False
    # The sampling engine's log-prob of each response token where it reported one (NaN where
    # not, and on environment tokens); None when it reported none.
    sampler_logprobs: tuple[float, ...] | None = None
    policy_version: int = 0  # the trainer's update count of the weights that sampled it

    def __post_init__(self) -> None:
        length = len(self.token_ids) - self.prompt_length
        sizes = {len(self.loss_mask), len(self.advantages), length}
        if self.sampler_logprobs is not None:
            sizes.add(len(self.sampler_logprobs))
        if self.prompt_length < 1 or length < 1 or len(sizes) != 1:
            raise ValueError(
                f"a TrainRow needs a prompt, a response and one mask/advantage/log-prob entry "
                f"per response token: prompt {self.prompt_length}, response {length}, per-token "
                f"fields {len(self.loss_mask)}/{len(self.advantages)}/"
                f"{'-' if self.sampler_logprobs is None else len(self.sampler_logprobs)}"
            )

    @property
    def response(self) -> tuple[int, ...]:
        return self.token_ids[self.prompt_length :]

    @property
    def trained_length(self) -> int:
        """Response tokens up to and including the last trained one: later tokens (an
        environment's last message) cannot change any trained token's log-prob."""
        for index in range(len(self.loss_mask) - 1, -1, -1):
            if self.loss_mask[index]:
                return index + 1
        return 0

    @staticmethod
    def from_segments(
        prompt_ids: tuple[int, ...],
        segments: tuple[Segment, ...],
        segment_advantages: tuple[float, ...],
        policy_version: int = 0,
    ) -> TrainRow:
        """A row from an episode's segments, each sampled segment's tokens getting its own
        advantage (`segment_advantages` has one entry per segment; environment segments'
        entries are ignored)."""
        if len(segment_advantages) != len(segments):
            raise ValueError(
                f"{len(segments)} segments but {len(segment_advantages)} segment advantages"
            )
        ids, mask, advantages, logprobs = list(prompt_ids), [], [], []
        reported = False
        for segment, advantage in zip(segments, segment_advantages, strict=True):
            count = len(segment.token_ids)
            ids.extend(segment.token_ids)
            mask.extend([segment.sampled] * count)
            advantages.extend([advantage if segment.sampled else 0.0] * count)
            if segment.sampled and segment.logprobs is not None:
                if len(segment.logprobs) != count:
                    raise ValueError(
                        f"a segment of {count} tokens came with {len(segment.logprobs)} log-probs"
                    )
                logprobs.extend(segment.logprobs)
                reported = True
            else:
                logprobs.extend([math.nan] * count)
        return TrainRow(
            token_ids=tuple(ids),
            prompt_length=len(prompt_ids),
            loss_mask=tuple(mask),
            advantages=tuple(advantages),
            sampler_logprobs=tuple(logprobs) if reported else None,
            policy_version=policy_version,
        )
