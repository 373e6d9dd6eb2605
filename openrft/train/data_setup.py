"""The job's data: training and validation rows, their token ids, and the seeded order in
which training rows are visited (a pure function of seed and position, so resume is exact)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from transformers import PreTrainedTokenizerBase

from openrft.config import JobConfig
from openrft.data import (
    check_prompt_lengths,
    encode_prompt,
    load_examples,
    resolve_data_path,
    split_holdout,
)
from openrft.rollout.verifiers_env import task_examples
from openrft.train.episodes import EpisodeJob, row_tools
from openrft.types import Example

Row = TypeVar("Row")


@dataclass(frozen=True)
class JobData:
    train: list[Example]
    validation: list[Example]
    prompt_ids: dict[str, list[int]]  # example id -> rendered prompt token ids


def load_job_data(
    config: JobConfig, tokenizer: PreTrainedTokenizerBase, episodes: EpisodeJob | None = None
) -> JobData:
    """The job's rows and their rendered prompts (with the tools a multi-turn job shows).
    A verifiers job's rows are its taskset's tasks (validation: `data.validation_size` of
    them held out)."""
    if episodes is not None and episodes.verifiers is not None:
        rows = task_examples(episodes.verifiers.tasks, episodes.verifiers.settings.taskset)
    else:
        rows = load_examples(resolve_data_path(config.data.train_file, "data.train_file"))
    if config.data.validation_file and not config.env.verifiers:
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
    tools = episodes.tools if episodes is not None else None
    prompt_ids = {
        e.id: encode_prompt(
            e.messages, tokenizer, template, row_tools(e, tools) if episodes else None
        )
        for e in train + validation
    }
    return JobData(train, validation, prompt_ids)


def total_steps(config: JobConfig, train_rows: int) -> int:
    if config.train.max_steps:
        return config.train.max_steps
    return max(1, math.ceil(config.train.epochs * train_rows / config.train.prompts_per_step))


def rows_at(rows: Sequence[Row], position: int, count: int, config: JobConfig) -> list[Row]:
    """`count` rows from `position` on in an endless stream of epochs, each epoch a fresh
    seeded permutation of `rows` (the training prompts, or SFT's conversations)."""
    orders: dict[int, list[int]] = {}
    batch = []
    for index in range(position, position + count):
        epoch, offset = divmod(index, len(rows))
        if epoch not in orders:
            orders[epoch] = epoch_order(epoch, len(rows), config)
        batch.append(rows[orders[epoch][offset]])
    return batch


@dataclass(frozen=True)
class PromptStream:
    """The training prompts of one step, from `start` on in the stream of epochs."""

    data: JobData
    config: JobConfig
    start: int  # prompts taken by earlier steps

    def take(self, offset: int, count: int) -> tuple[list[Example], list[list[int]]]:
        """`count` prompts from `start + offset` on, with their rendered token ids."""
        examples = rows_at(self.data.train, self.start + offset, count, self.config)
        return examples, [self.data.prompt_ids[e.id] for e in examples]


def epoch_order(epoch: int, count: int, config: JobConfig) -> list[int]:
    order = list(range(count))
    if config.data.shuffle:
        random.Random(config.train.seed * 1_000_003 + epoch).shuffle(order)
    return order
