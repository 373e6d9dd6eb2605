"""The job's data: training and validation rows, their token ids, and the seeded order in
which training rows are visited (a pure function of seed and position, so resume is exact)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from openrft.config import JobConfig
from openrft.data import (
    check_prompt_lengths,
    encode_prompt,
    load_examples,
    resolve_data_path,
    split_holdout,
)
from openrft.types import Example


@dataclass(frozen=True)
class JobData:
    train: list[Example]
    validation: list[Example]
    prompt_ids: dict[str, list[int]]  # example id -> rendered prompt token ids


def load_job_data(config: JobConfig, tokenizer: PreTrainedTokenizerBase) -> JobData:
    rows = load_examples(resolve_data_path(config.data.train_file, "data.train_file"))
    if config.data.validation_file:
        train = rows
        validation = load_examples(
            resolve_data_path(config.data.validation_file, "data.validation_file")
        )
    else:
        train, validation = split_holdout(rows, config.data.validation_size, config.train.seed)
    if config.eval.max_prompts:
        validation = validation[: config.eval.max_prompts]
    template = config.model.chat_template
    for examples in (train, validation):
        check_prompt_lengths(examples, tokenizer, config.data.max_prompt_tokens, template)
    prompt_ids = {e.id: encode_prompt(e.messages, tokenizer, template) for e in train + validation}
    return JobData(train, validation, prompt_ids)


def total_steps(config: JobConfig, train_rows: int) -> int:
    if config.train.max_steps:
        return config.train.max_steps
    return max(1, math.ceil(config.train.epochs * train_rows / config.train.prompts_per_step))


def batch_for_step(step: int, data: JobData, config: JobConfig) -> list[Example]:
    """The prompts of RL step `step` (1-based): the next slice of an endless stream of epochs,
    each epoch a fresh seeded permutation of the training rows."""
    size, count = config.train.prompts_per_step, len(data.train)
    start = (step - 1) * size
    batch = []
    for position in range(start, start + size):
        epoch, offset = divmod(position, count)
        batch.append(data.train[epoch_order(epoch, count, config)[offset]])
    return batch


def epoch_order(epoch: int, count: int, config: JobConfig) -> list[int]:
    order = list(range(count))
    if config.data.shuffle:
        random.Random(config.train.seed * 1_000_003 + epoch).shuffle(order)
    return order
