"""What the Bedrock Runtime endpoints (openrft.serve.bedrock_runtime) share: Bedrock's error
(a status, the code botocore reports as `Error.Code`, a message), checks of request values
that name the offending field, the stop reason of a completion in Bedrock's words, and a
reply's text cut into the per-token pieces a stream sends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from openrft.rollout.openai_chat import ChatRequest, RequestError, parse_request
from openrft.types import Completion

MAX_STOP_SEQUENCES = 2500  # Bedrock's limit (InferenceConfigurationStopSequencesList)


class BedrockError(Exception):
    """A request Bedrock would refuse: `code` is its error shape (ValidationException,
    ResourceNotFoundException, ...), sent as x-amzn-ErrorType with `{"message": ...}`."""

    def __init__(self, message: str, code: str = "ValidationException", status: int = 400):
        super().__init__(message)
        self.message, self.code, self.status = message, code, status


def from_request_error(error: RequestError) -> BedrockError:
    """The chat core's refusal (a 400) or failure (a 500) as Bedrock's error."""
    if error.status >= 500:
        return BedrockError(error.message, "InternalServerException", error.status)
    return BedrockError(error.message)


def check_number(
    value: Any, where: str, low: float, high: float | None = None, integer: bool = False
) -> Any:
    """`value` when it is a number (an integer if `integer`) in [low, high]."""
    kinds = (int,) if integer else (int, float)
    in_range = isinstance(value, kinds) and low <= value and (high is None or value <= high)
    if isinstance(value, bool) or not in_range:
        kind = "an integer" if integer else "a number"
        upper = "" if high is None else f" to {high:g}"
        raise BedrockError(f"{where} must be {kind} from {low:g}{upper}, got {value!r}")
    return value


def check_strings(value: Any, where: str, limit: int = MAX_STOP_SEQUENCES) -> list[str]:
    """`value` when it is a list of at most `limit` non-empty strings."""
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise BedrockError(f"{where} must be a list of non-empty strings")
    if len(value) > limit:
        raise BedrockError(f"{where} takes at most {limit} strings, got {len(value)}")
    return value


def check_object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BedrockError(f"{where} must be an object")
    return value


def chat_request(body: Mapping[str, Any]) -> ChatRequest:
    """`parse_request` for a body translated from Bedrock's, whose stop list may be longer than
    OpenAI's 4 strings (Bedrock allows 2,500) and which may carry a `top_k`."""
    stop, top_k = body.get("stop"), body.get("top_k")
    if isinstance(stop, list) and (
        len(stop) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in stop)
    ):
        raise RequestError(f"'stop' must be at most {MAX_STOP_SEQUENCES} non-empty strings", "stop")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise RequestError("'top_k' must be an integer from 0", "top_k")
    rest = {k: v for k, v in body.items() if k not in ("stop", "top_k")}
    if stop is not None and not isinstance(stop, list):
        rest["stop"] = stop  # a single string: parse_request checks it
    request = parse_request(rest)
    params = replace(request.params, top_k=top_k or 0)
    if isinstance(stop, list):
        params = replace(params, stop=tuple(stop))
    return replace(request, params=params)


def stop_reason(finish_reason: str, completion: Completion, end_token_ids: frozenset[int]) -> str:
    """Why generation stopped, in the words Converse and Anthropic's Messages share."""
    if finish_reason == "tool_calls":
        return "tool_use"
    if finish_reason == "length":
        return "max_tokens"
    # The engine stops at an end-of-turn token or right after the token completing a stop
    # string: a last token that does not end the turn means a stop sequence.
    ids = completion.token_ids
    return "end_turn" if not ids or ids[-1] in end_token_ids else "stop_sequence"


def matched_stop(raw_text: str, text: str, stop: Sequence[str]) -> str | None:
    """The stop sequence the reply `text` was cut before (`raw_text` is the uncut decode)."""
    return next((s for s in stop if raw_text.startswith(s, len(text))), None)


def text_pieces(tokenizer: Any, token_ids: Sequence[int], text: str) -> list[str]:
    """`text` cut where each generated token's text ends: a stream's text deltas. Tokens are
    decoded in a short sliding window (a token can be half a UTF-8 character, or change how
    the one before it decodes), and the pieces are slices of `text` itself, so they always
    join to exactly `text` (a stop string cut off included)."""
    ends, total = [], 0
    prefix = read = 0  # the window: tokens[prefix:read] are decoded and sent
    for end in range(1, len(token_ids) + 1):
        sent = tokenizer.decode(token_ids[prefix:read], skip_special_tokens=True)
        grown = tokenizer.decode(token_ids[prefix:end], skip_special_tokens=True)
        if len(grown) > len(sent) and not grown.endswith("\ufffd"):
            total += len(grown) - len(sent)
            ends.append(total)
            prefix, read = read, end
    bounds = [0, *(e for e in ends if e < len(text)), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
