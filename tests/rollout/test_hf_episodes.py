"""Multi-turn decoding with KV continuation, each decoder against a fresh forward of the
whole history: idle (waiting) rows and padded environment chunks change nothing a row sees;
episodes continue, end early and leave the batch; the history is never prefilled again."""

from __future__ import annotations

from concurrent.futures import Future

import pytest
import torch

from openrft.models.load import load_model
from openrft.rollout.episodes import Continuation, generate_by_reprefill
from openrft.rollout.hf_engine import HFEngine, left_pad
from openrft.types import SamplingParams
from rollout.test_hf_engine import _reinit

PROMPTS = ["the movie was great", "what is 12 plus 30 ?", "0 1 2"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir))
    return _reinit(model).eval(), tokenizer


@pytest.fixture(scope="module", params=["compact", "transformers", "plain"])
def engine(loaded, request) -> HFEngine:
    model, tokenizer = loaded
    if request.param == "plain":  # transformers' own DynamicCache, no fast paths
        return HFEngine(model, tokenizer, decoder="transformers", fast_paths=False)
    return HFEngine(model, tokenizer, decoder=request.param)


def fresh_logits(model, sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """The next-token logits after each whole sequence, by one plain forward."""
    ids, mask = left_pad(sequences, pad_id, torch.device("cpu"))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions)
    return out.logits[:, -1].double()


def test_idle_steps_and_padded_chunks_match_a_fresh_forward(loaded, engine):
    model, tokenizer = loaded
    decoder = engine.decoder
    prompts = [tokenizer(t)["input_ids"] for t in PROMPTS[:2]]
    ids, mask = left_pad(prompts, engine.pad_id, decoder.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    histories = [list(p) for p in prompts for _ in range(2)]  # 2 samples per prompt
    with decoder.inference():
        logits = decoder.prefill(ids, mask, positions, repeats=2, room=4)
        position = positions[:, -1].repeat_interleave(2) + 1
        # Three steps; row 1 idles on the second and third (its environment is running).
        plan = [[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]
        idles = [[False] * 4, [False, True, False, False], [False, True, False, False]]
        for tokens, idle in zip(plan, idles, strict=True):
            idle_B = torch.tensor(idle)
            logits = decoder.step(torch.tensor(tokens), position, idle_B)
            position = position + (~idle_B).long()
            for row, (token, waits) in enumerate(zip(tokens, idle, strict=True)):
                if not waits:
                    histories[row].append(token)
        expected = fresh_logits(model, histories, engine.pad_id)
        live = [0, 2, 3]
        torch.testing.assert_close(logits.double()[live], expected[live], atol=1e-4, rtol=1e-4)
        # Environment chunks of different lengths (padding inside the chunk), past the room.
        chunks = [[20, 21, 22, 23, 24, 25], [30], [40, 41, 42], [50, 51, 52, 53, 54, 55, 56]]
        width = max(map(len, chunks))
        tokens_B_K = torch.tensor([[engine.pad_id] * (width - len(c)) + c for c in chunks])
        real_B_K = torch.tensor([[False] * (width - len(c)) + [True] * len(c) for c in chunks])
        positions_B_K = position[:, None] + (real_B_K.long().cumsum(-1) - 1).clamp(min=0)
        logits = decoder.extend(tokens_B_K, real_B_K, positions_B_K)
        position = position + real_B_K.long().sum(-1)
        for row, chunk in enumerate(chunks):
            histories[row] += chunk
        torch.testing.assert_close(
            logits.double(), fresh_logits(model, histories, engine.pad_id), atol=1e-4, rtol=1e-4
        )
        # Rows leave; the rest decode on.
        keep = torch.tensor([0, 3])
        decoder.keep(keep)
        logits = decoder.step(torch.tensor([60, 61]), position[keep])
        histories = [histories[0] + [60], histories[3] + [61]]
        torch.testing.assert_close(
            logits.double(), fresh_logits(model, histories, engine.pad_id), atol=1e-4, rtol=1e-4
        )


class Scripted:
    """An environment answering every first turn with a fixed chunk, ending at the second;
    records what each episode sampled."""

    def __init__(self, chunks: dict[int, list[int]], turns: int = 2):
        self.chunks = chunks
        self.turns = turns
        self.sampled: dict[int, list[list[int]]] = {}

    def __call__(self, seq: int, turn) -> Future:
        self.sampled.setdefault(seq, []).append(list(turn.token_ids))
        future: Future = Future()
        done = len(self.sampled[seq]) >= self.turns or seq not in self.chunks
        future.set_result(None if done else Continuation(tuple(self.chunks[seq]), 6))
        return future


def test_episodes_continue_token_for_token_as_a_fresh_decode(loaded, engine):
    """Greedy episodes: each second turn equals greedy decoding of the whole history from
    scratch (prompt, first turn, environment tokens), so the cache carried across turns holds
    exactly that history. Episode 1 ends after its first turn (leaves the batch)."""
    model, tokenizer = loaded
    prompts = [tokenizer(t)["input_ids"] for t in PROMPTS]
    env = Scripted({0: [20, 21, 22], 2: [30], 3: [40, 41, 42, 43, 44], 4: [50, 51], 5: [7]})
    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=5)
    engine.generate_episodes(prompts, params, env)
    assert sorted(env.sampled) == list(range(6))
    assert len(env.sampled[1]) == 1  # no continuation: over after one turn
    for seq, chunk in env.chunks.items():
        first, second = env.sampled[seq]
        history = [*prompts[seq // 2], *first, *chunk]
        fresh = engine.generate([history], SamplingParams(temperature=0.0, max_new_tokens=6))
        assert list(fresh[0][0].token_ids) == second, seq


def test_waiting_rows_do_not_stall_on_each_other(loaded, engine):
    """A row whose turn ends early idles while the others decode: every episode's first turn
    is what single-turn greedy decoding gives."""
    _, tokenizer = loaded
    prompts = [tokenizer(t)["input_ids"] for t in PROMPTS]
    env = Scripted({})
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)
    engine.generate_episodes(prompts, params, env)
    single = engine.generate(prompts, params)
    assert [env.sampled[i][0] for i in range(3)] == [list(g[0].token_ids) for g in single]


def test_reprefill_gives_what_kv_continuation_gives(loaded, engine):
    """The path of engines without KV continuation (vLLM): every turn a token-id prompt of the
    whole history. Greedy, it samples the very turns the continued cache samples."""
    _, tokenizer = loaded
    prompts = [tokenizer(t)["input_ids"] for t in PROMPTS]
    chunks = {0: [20, 21, 22], 2: [30], 3: [40, 41, 42, 43, 44], 4: [50, 51], 5: [7]}
    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=5)
    continued, reprefilled = Scripted(chunks), Scripted(chunks)
    engine.generate_episodes(prompts, params, continued)
    generate_by_reprefill(engine, prompts, params, reprefilled)
    assert reprefilled.sampled == continued.sampled
