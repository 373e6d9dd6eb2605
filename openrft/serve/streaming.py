"""Streaming while generating: the text of each sample leaves the server as its tokens are
decoded, not once the batch has finished.

The rollout engine (openrft.rollout.hf_engine) has no per-token hook, and none is added to it:
`TokenTap` wraps the engine's decoder for one `generate` call and reads each row's sampled
token where the engine feeds it back (`Decoder.step`, rows numbered as the Decoder protocol
numbers them and renumbered by `keep`); the engine's `on_group` hands on each request's
finished completions as soon as they are done, before the rest of the batch. So a streamed
request batches with others exactly as before: streaming only listens.

A `StreamWatch` (one per streamed request) runs in the generation thread: it decodes each
sample's tokens in a short sliding window (as openrft.serve.bedrock_common.text_pieces does),
holds back the text that a stop string could still cut, and posts the new text to the request's
asyncio queue with `loop.call_soon_threadsafe`, so the event loop is never held by decoding.
The text it sends is always a prefix of the completion's final text; openrft.serve.
chat_service sends the rest (the last token, which the engine never feeds back) at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from openrft.types import Completion, SamplingParams

log = logging.getLogger(__name__)
Post = Callable[[Any], None]  # puts an item on the request's queue (thread-safe)


@dataclass(frozen=True)
class TextDelta:
    """New text of one choice (sample) of a streamed request."""

    choice: int
    text: str


class _Sample:
    """One sample's decoded text so far, in a sliding window of tokens."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.prefix = self.read = 0  # tokens[prefix:read] are decoded into `text`
        self.text = ""
        self.sent = 0  # characters of `text` already posted
        self.ended = False


class StreamWatch:
    """Called from the generation thread with each sampled token of one request (`token`) and
    its finished completions (`finished`); posts TextDelta items, then the completions.

    `incremental=False` (a request with tools, whose text may turn out to be tool calls)
    posts the completions only."""

    def __init__(
        self,
        post: Post,
        tokenizer: Any,
        end_token_ids: frozenset[int],
        params: SamplingParams,
        incremental: bool = True,
    ):
        self.post, self.tokenizer, self.end_token_ids = post, tokenizer, end_token_ids
        self.stop = tuple(params.stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.incremental = incremental
        self.samples = [_Sample() for _ in range(params.n)]
        self.closed = False  # the client went away: decode nothing more

    def token(self, sample: int, token_id: int) -> None:
        state = self.samples[sample]
        if not self.incremental or self.closed or state.ended:
            return
        try:
            self._decode(sample, state, token_id)
        except Exception:  # never the batch's failure: the rest is sent once the reply is done
            log.exception("streaming sample %d failed; its text follows at the end", sample)
            state.ended = True

    def _decode(self, sample: int, state: _Sample, token_id: int) -> None:
        state.tokens.append(token_id)
        if token_id in self.end_token_ids:  # the end of the turn: nothing more to show
            state.ended = True
            return
        decode = self.tokenizer.decode
        window = state.tokens[state.prefix :]
        sent = decode(window[: state.read - state.prefix], skip_special_tokens=True)
        grown = decode(window, skip_special_tokens=True)
        if len(grown) > len(sent) and not grown.endswith("\ufffd"):
            state.text += grown[len(sent) :]
            state.prefix, state.read = state.read, len(state.tokens)
        self._send(sample, state)

    def _send(self, sample: int, state: _Sample) -> None:
        """Posts the text no stop string can cut any more (the engine stops a sample at the
        token that completes a stop string, so a later match ends in text not seen yet)."""
        cuts = [cut for cut in (state.text.find(s) for s in self.stop) if cut >= 0]
        if cuts:
            state.ended = True  # the engine stops here too; later tokens of the row are idle
            safe = min(cuts)
        else:
            safe = len(state.text) - self.hold
        if safe > state.sent:
            self.post(TextDelta(sample, state.text[state.sent : safe]))
            state.sent = safe

    def finished(self, group: list[Completion]) -> None:
        self.post(group)


class TokenTap:
    """A Decoder that passes every call on to `inner` and reports each token fed back to it
    as `report(prompt, sample, token_id)`: the prompt's index in the whole `generate` call
    (chunks counted by their prefills) and the sample's index among its `repeats`."""

    def __init__(self, inner: Any, report: Callable[[int, int, int], None]):
        self.inner, self.report = inner, report
        self.offset = self.prompts = 0  # prompts before this chunk, prompts in it
        self.repeats = 1
        self.rows: list[int] = []  # each batch row's sequence index in the chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def prefill(
        self,
        input_ids_P_L: torch.Tensor,
        attention_P_L: torch.Tensor,
        positions_P_L: torch.Tensor,
        repeats: int,
        room: int,
    ) -> torch.Tensor:
        self.offset += self.prompts
        self.prompts, self.repeats = int(input_ids_P_L.shape[0]), repeats
        self.rows = list(range(self.prompts * repeats))
        return self.inner.prefill(input_ids_P_L, attention_P_L, positions_P_L, repeats, room)

    def keep(self, rows_B: torch.Tensor) -> None:
        self.rows = [self.rows[row] for row in rows_B.tolist()]
        self.inner.keep(rows_B)

    def step(self, tokens_B: torch.Tensor, positions_B: torch.Tensor, *rest: Any) -> torch.Tensor:
        for seq, token in zip(self.rows, tokens_B.tolist(), strict=True):
            self.report(self.offset + seq // self.repeats, seq % self.repeats, token)
        return self.inner.step(tokens_B, positions_B, *rest)


def generate_watched(
    engine: Any,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    watches: Sequence[StreamWatch | None],
) -> list[list[Completion]]:
    """`engine.generate(prompts, params)`, each prompt's tokens and finished group also handed
    to its watch (None: a request that does not stream). The engine is not thread-safe: this
    runs in the one generation thread."""

    def report(prompt: int, sample: int, token_id: int) -> None:
        watch = watches[prompt]
        if watch is not None:
            watch.token(sample, token_id)

    def on_group(prompt: int, group: list[Completion]) -> None:
        watch = watches[prompt]
        if watch is not None:
            watch.finished(group)

    decoder = engine.decoder
    engine.decoder = TokenTap(decoder, report)
    try:
        return engine.generate(prompts, params, on_group=on_group)
    finally:
        engine.decoder = decoder
