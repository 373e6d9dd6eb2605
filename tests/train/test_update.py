"""The update's log-probs: shared-prompt computation must equal a plain full forward, in
values and in gradients; zero-advantage rows need no forward."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from openrft.train.update import TrainRow, sequence_logprobs, train_rows
from openrft.types import Completion, Example, Grade, RolloutGroup

ROWS = [
    TrainRow((5, 6, 7, 8, 9, 10), 3, 1.0),  # prompt (5, 6, 7), completion of 3 tokens
    TrainRow((5, 6, 7, 11), 3, -1.0),  # same prompt, 1-token completion
    TrainRow((1, 2, 3, 4, 5, 6, 7, 8), 5, 0.5),  # another prompt
    TrainRow((5, 6, 7, 12, 13, 14, 15), 3, 0.3),
]


def plain_logprobs(model, row: TrainRow) -> torch.Tensor:
    logprobs_L_V = model(torch.tensor([row.token_ids])).logits[0].log_softmax(-1)
    positions = range(row.prompt_length, len(row.token_ids))
    return torch.stack([logprobs_L_V[t - 1, row.token_ids[t]] for t in positions])


def test_shared_prompt_logprobs_equal_a_full_forward(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    logprobs_B_T, entropy_B_T, mask_B_T = sequence_logprobs(model, ROWS, 4, with_entropy=True)
    assert mask_B_T.sum(1).tolist() == [3, 1, 3, 4]
    for b, row in enumerate(ROWS):
        expected = plain_logprobs(model, row)
        torch.testing.assert_close(logprobs_B_T[b, : len(expected)], expected)
        assert (entropy_B_T[b, : len(expected)] > 0).all()
        assert (logprobs_B_T[b, len(expected) :] == 0).all()  # padding stays zero


def test_shared_prompt_gradients_equal_a_full_forward(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    weight = model.model.layers[0].self_attn.q_proj.weight
    logprobs_B_T, _, mask_B_T = sequence_logprobs(model, ROWS, 4, with_entropy=False)
    (logprobs_B_T * mask_B_T).sum().backward()
    shared = weight.grad.clone()
    model.zero_grad()
    sum(plain_logprobs(model, row).sum() for row in ROWS).backward()
    # RMSNorm computes in float32 inside a float64 model, hence the tolerance.
    torch.testing.assert_close(shared, weight.grad, rtol=1e-6, atol=1e-8)


def test_failed_and_truncated_rows_are_left_out():
    example = Example(id="e", messages=({"role": "user", "content": "hi"},))
    completions = [
        Completion((4, 2), "a", "stop"),
        Completion((4, 4), "b", "length"),
        Completion((5, 2), "c", "stop"),
    ]
    grades = [Grade(1.0), Grade(0.0), Grade.failed("runtime_error", "boom")]
    group = RolloutGroup(example, (1, 2, 3), completions, grades, [1.0, -1.0, float("nan")])
    assert [r.token_ids for r in train_rows([group], mask_truncated=False)] == [
        (1, 2, 3, 4, 2),
        (1, 2, 3, 4, 4),
    ]
    assert [r.token_ids for r in train_rows([group], mask_truncated=True)] == [(1, 2, 3, 4, 2)]
