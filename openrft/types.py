"""The objects that cross stage boundaries (data -> rollout -> rewards -> algo -> train).

Every stage takes and returns these frozen dataclasses; nothing passes string-keyed
dicts between stages. Chat messages stay in the OpenAI shape (`{"role", "content"}`)
because that is the format users upload and graders receive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict


class Message(TypedDict):
    """One chat turn in OpenAI format."""

    role: str
    content: str


FinishReason = Literal["stop", "length"]

# Typed grader failure kinds, counted per step as `reward/errors/<kind>`.
GradeErrorKind = Literal[
    "parse_error",  # the grader could not parse the response or its own output
    "runtime_error",  # the grader raised
    "timeout",  # the grader did not answer in time
    "invalid_output",  # NaN, inf, a non-number, a missing or extra id
    "judge_refusal",  # an LLM judge refused to score
    "server_error",  # a remote grader answered with an HTTP error
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


@dataclass(frozen=True)
class Completion:
    """One generated assistant turn."""

    token_ids: tuple[int, ...]  # generated tokens, including the end-of-turn token if produced
    text: str  # decoded text without special tokens, cut before a stop string
    finish_reason: FinishReason  # "stop" (end of turn or stop string) or "length" (hit the cap)
    # The engine's log-prob of each token (raw model, temperature 1), where it reports them
    # (vLLM); the trainer corrects for its mismatch. Not part of equality: it is a measurement.
    logprobs: tuple[float, ...] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Sample:
    """What a grader scores: the prompt plus one generated assistant turn."""

    id: str  # unique per completion: "<example id>:<index in group>"
    messages: tuple[Message, ...]  # the prompt turns followed by the generated assistant turn
    reference_answer: Any = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    example_id: str = ""  # the dataset row this completion answers
    completion_tokens: int = 0  # tokens generated for this completion (0 when unknown)

    @property
    def response(self) -> str:
        """The generated assistant text."""
        return self.messages[-1]["content"]

    def item(self) -> dict[str, Any]:
        """The row as a user's reward function sees it: every field, as in the dataset."""
        return {
            **self.metadata,
            "id": self.example_id,
            "messages": [dict(m) for m in self.messages[:-1]],
            "reference_answer": self.reference_answer,
        }


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


@dataclass
class RolloutGroup:
    """One prompt with its G completions, their grades and (after the algorithm) advantages."""

    example: Example
    prompt_token_ids: tuple[int, ...]
    completions: list[Completion]
    grades: list[Grade]
    advantages: list[float] = field(default_factory=list)
