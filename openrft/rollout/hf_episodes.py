"""Multi-turn decoding in this process: every episode continues from its own KV cache.

The single-turn loop (HFEngine.generate) with three changes:
- a row whose turn ends waits (its environment runs meanwhile on a worker thread, through the
  `respond` callback) while the other rows keep decoding; a waiting row is fed a filler
  token whose cache column is masked out for it (`idle_B`), so it costs compute but never
  changes what the row attends to;
- when no row is decoding, the turn's answers are collected: finished episodes leave the
  batch, and the others get their last sampled token plus the environment's tokens appended
  in one `extend` call (left-padded within the chunk; the padding columns are masked), so the
  history is never prefilled again;
- each row has its own token cap per turn (the rest of its episode's token budget).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future

import torch

from openrft.rollout.engine import completion_from_tokens
from openrft.rollout.episodes import Continuation, Respond
from openrft.rollout.sampling import sample_next_tokens
from openrft.types import FinishReason, SamplingParams


@torch.no_grad()
def decode_episodes(
    engine, prompts: Sequence[Sequence[int]], params: SamplingParams, respond: Respond
) -> None:
    """`params.n` episodes per prompt through `engine`'s decoder, `engine.batch_size` rows at
    a time (episode p * n + k is prompt p's k-th)."""
    generator = torch.Generator(device=engine.decoder.device).manual_seed(params.seed)
    prompts_per_chunk = max(1, engine.batch_size // params.n)
    with engine.decoder.inference():
        for start in range(0, len(prompts), prompts_per_chunk):
            chunk = prompts[start : start + prompts_per_chunk]
            offset = start * params.n

            def respond_in_chunk(seq: int, turn, offset=offset) -> Future:
                return respond(offset + seq, turn)

            _decode_chunk(engine, chunk, params, respond_in_chunk, generator)


def _decode_chunk(engine, prompts, params: SamplingParams, respond: Respond, generator) -> None:
    from openrft.rollout.hf_engine import left_pad  # the engine module imports this one

    decoder = engine.decoder
    device = decoder.device
    logits_B_V, position_B = engine.prefill_samples(prompts, params)
    total = len(prompts) * params.n
    turn_tokens: list[list[int]] = [[] for _ in range(total)]
    caps = [params.max_new_tokens] * total
    decoding = set(range(total))
    waiting: dict[int, Future] = {}
    active = list(range(total))  # the episode of each batch row
    workspace = torch.empty(logits_B_V.numel(), dtype=torch.float32, device=device)
    while True:
        next_B = sample_next_tokens(
            logits_B_V, params.temperature, params.top_p, params.top_k, generator, workspace
        )
        feed = next_B.tolist()
        for seq, token in zip(active, feed, strict=True):
            if seq not in decoding:
                continue
            tokens = turn_tokens[seq]
            tokens.append(token)
            reason: FinishReason | None = None
            if token in engine.end_token_ids or engine._hit_stop_string(tokens, params):
                reason = "stop"
            elif len(tokens) >= caps[seq]:
                reason = "length"
            if reason is not None:
                decoding.discard(seq)
                turn = completion_from_tokens(engine.tokenizer, tokens, reason, params.stop)
                waiting[seq] = respond(seq, turn)
        if decoding:
            # Rows that are not decoding (waiting, or just finished their turn) are idle: their
            # column is masked for them, and the token they just sampled is fed later, first
            # in the chunk that continues their episode.
            idle_B = torch.tensor([seq not in decoding for seq in active], device=device)
            logits_B_V = decoder.step(next_B, position_B, idle_B)
            position_B = position_B + (~idle_B).long()
            continue
        continuations = {seq: future.result() for seq, future in waiting.items()}
        waiting.clear()
        live = [row for row, seq in enumerate(active) if continuations.get(seq) is not None]
        if not live:
            return
        if len(live) < len(active):
            index = torch.tensor(live, device=device)
            decoder.keep(index)
            position_B = position_B[index]
            active = [active[row] for row in live]
        chunks = []
        for seq in active:
            continuation: Continuation = continuations[seq]  # type: ignore[assignment]
            chunks.append([turn_tokens[seq][-1], *continuation.token_ids])
            caps[seq] = continuation.max_new_tokens
            turn_tokens[seq] = []
        tokens_B_K, attention_B_K = left_pad(chunks, engine.pad_id, device)
        real_B_K = attention_B_K.bool()
        # Real tokens continue each row's positions; padding repeats the position before.
        positions_B_K = position_B[:, None] + (real_B_K.long().cumsum(-1) - 1).clamp(min=0)
        positions_B_K = torch.where(real_B_K, positions_B_K, position_B[:, None])
        logits_B_V = decoder.extend(tokens_B_K, real_B_K, positions_B_K)
        position_B = position_B + real_B_K.long().sum(-1)
        decoding = set(active)
