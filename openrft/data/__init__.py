"""Prompt data: loading and validating JSONL rows, rendering prompts, built-in data sets.

Rows become `openrft.types.Example`s; every problem is reported as a `RowError` naming
file, line and field. See docs/data.md for the format and the built-in data sets.
"""

from openrft.data.builtin import builtin_choices, resolve_data_path
from openrft.data.load import (
    FileCheck,
    check_prompt_lengths,
    load_examples,
    split_holdout,
    validate_file,
    validate_line,
)
from openrft.data.prepare import DATASETS, BuiltinDataset, prepare_dataset
from openrft.data.render import CHAT_TEMPLATES, encode_prompt, render_prompt
from openrft.data.summary import DatasetSummary, format_summary, summarize_file

__all__ = [
    "CHAT_TEMPLATES",
    "DATASETS",
    "BuiltinDataset",
    "DatasetSummary",
    "FileCheck",
    "builtin_choices",
    "check_prompt_lengths",
    "encode_prompt",
    "format_summary",
    "load_examples",
    "prepare_dataset",
    "render_prompt",
    "resolve_data_path",
    "split_holdout",
    "summarize_file",
    "validate_file",
    "validate_line",
]
