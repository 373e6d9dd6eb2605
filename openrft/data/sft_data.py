"""Supervised fine-tuning (SFT) data: chat conversations that end with an assistant turn.

One JSON object per line, OpenAI fine-tuning format:

    {"messages": [{"role": "user", "content": "a charming film"},
                  {"role": "assistant", "content": "positive"}], "id": "r1"}

Several assistant turns are allowed; each is trained unless it carries `"weight": 0` (as in
OpenAI's format). With `from_reference=True`, RL prompt rows are read instead (the RL
validator) and each row's string `reference_answer` becomes the assistant turn, so the same
files (`builtin:sst2/train`, ...) serve SFT and RFT. Errors name file, line and field, like
`openrft.data.load`, and are raised together as one `DatasetError`.

`tokenize_conversations` renders each conversation with the chat template and returns its
token ids with a loss mask over the trained assistant tokens only: every assistant turn is
located by rendering the conversation incrementally (prompt up to the turn with the
generation prompt, then through the turn), and the span ends with the end-of-turn token.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from openrft.data.load import _id_problems, message_list_problems, parse_row, validate_line
from openrft.data.render import render_prompt, template_messages
from openrft.errors import DatasetError, RowError
from openrft.types import Message

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

END_OF_TURN_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>")
FROM_REFERENCE_HINT = "rows in RL prompt format with a reference_answer need --from-reference"


@dataclass(frozen=True)
class Conversation:
    """One SFT row: the whole chat, ending with an assistant turn."""

    id: str
    messages: tuple[Message, ...]
    trained_turns: tuple[int, ...]  # indices of the assistant turns that enter the loss
    source: str = ""  # "path/file.jsonl:12", for error messages


@dataclass(frozen=True)
class TokenizedConversation:
    """A conversation as the trainer sees it: token ids and the assistant-token loss mask."""

    id: str
    input_ids: tuple[int, ...]
    loss_mask: tuple[bool, ...]  # True where the token is part of a trained assistant turn
    source: str = ""

    @property
    def trained_tokens(self) -> int:
        return sum(self.loss_mask)


def load_conversations(path: str | Path, from_reference: bool = False) -> list[Conversation]:
    """Every row of an SFT JSONL file; raises `DatasetError` listing every bad row."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        reason = "file not found" if isinstance(exc, FileNotFoundError) else f"cannot read: {exc}"
        raise DatasetError([RowError(file, 0, "", reason)]) from exc
    rows: list[Conversation] = []
    errors: list[RowError] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append(RowError(file, number, "", f"not valid UTF-8 (byte {exc.start})"))
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            continue
        check = reference_line if from_reference else validate_sft_line
        row, row_errors = check(text, file, number)
        errors.extend(row_errors)
        if row is not None:
            rows.append(row)
    rows = _unique_ids(rows, errors)
    if not rows and not errors:
        errors.append(RowError(file, 0, "", "no rows: the file is empty"))
    if errors:
        raise DatasetError(sorted(errors, key=lambda e: e.line))
    return rows


def validate_sft_line(
    text: str, file: str, line: int
) -> tuple[Conversation | None, list[RowError]]:
    """One SFT JSONL line as a `Conversation` (None when it has errors) and its problems."""
    row, problem = parse_row(text)
    if row is None:
        return None, [RowError(file, line, "", problem)]
    problems = _conversation_problems(row) + _id_problems(row)
    if problems:
        return None, [RowError(file, line, field, message) for field, message in problems]
    messages = tuple(
        cast(Message, {"role": m["role"], "content": m["content"]}) for m in row["messages"]
    )
    trained = tuple(
        i
        for i, m in enumerate(row["messages"])
        if m["role"] == "assistant" and m.get("weight", 1) == 1
    )
    return Conversation(row.get("id", ""), messages, trained, f"{file}:{line}"), []


def reference_line(text: str, file: str, line: int) -> tuple[Conversation | None, list[RowError]]:
    """An RL prompt row whose string `reference_answer` becomes the (trained) assistant turn."""
    example, errors = validate_line(text, file, line)
    if example is None:
        return None, errors
    answer = example.reference_answer
    if not isinstance(answer, str) or not answer.strip():
        got = "missing" if answer is None else f"a {type(answer).__name__}: {answer!r}"
        message = f"must be a non-empty string to become the assistant turn, got {got}"
        return None, [RowError(file, line, "reference_answer", message)]
    reply = cast(Message, {"role": "assistant", "content": answer})
    messages = (*example.messages, reply)
    return Conversation(example.id, messages, (len(messages) - 1,), example.source), []


def _conversation_problems(row: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, message) for everything wrong with an SFT row's `messages`."""
    problems, messages = message_list_problems(row)
    if not messages:
        return problems
    for i, message in enumerate(messages):
        if isinstance(message, dict) and "weight" in message:
            problems += _weight_problems(f"messages[{i}]", message)
    if problems:
        return problems
    if messages[-1]["role"] != "assistant":
        message = "the last message must be an assistant turn, the one SFT trains on"
        problems.append(("messages[-1].role", f"{message} ({FROM_REFERENCE_HINT})"))
    if not any(m["role"] == "user" for m in messages):
        problems.append(("messages", "has no user turn; a conversation needs at least one"))
    assistant = [m for m in messages if m["role"] == "assistant"]
    if assistant and all(m.get("weight", 1) == 0 for m in assistant):
        problems.append(("messages", "every assistant turn has weight 0; nothing to train on"))
    return problems


def _weight_problems(field: str, message: dict[str, Any]) -> list[tuple[str, str]]:
    weight = message["weight"]
    if isinstance(weight, bool) or weight not in (0, 1):
        return [(f"{field}.weight", f"must be 0 or 1, got {json.dumps(weight)}")]
    if message.get("role") != "assistant":
        return [(f"{field}.weight", "is allowed on assistant turns only")]
    return []


def conversation_id(messages: Sequence[Message]) -> str:
    """A stable id for a row without one: hash of its canonical messages."""
    canonical = json.dumps([dict(m) for m in messages], sort_keys=True, ensure_ascii=False)
    return "row-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def _unique_ids(rows: list[Conversation], errors: list[RowError]) -> list[Conversation]:
    """Generated ids get "-2", "-3" suffixes on repeats; a repeated explicit id is an error."""
    first_line: dict[str, int] = {}
    kept: list[Conversation] = []
    for row in rows:
        file, _, line_text = row.source.rpartition(":")
        line = int(line_text) if line_text.isdigit() else 0
        new_id = row.id
        if not row.id:
            base, n = conversation_id(row.messages), 2
            new_id = base
            while new_id in first_line:
                new_id, n = f"{base}-{n}", n + 1
        elif row.id in first_line:
            message = f"duplicate id {row.id!r}; first used on line {first_line[row.id]}"
            errors.append(RowError(file, line, "id", message))
            continue
        first_line[new_id] = line
        kept.append(Conversation(new_id, row.messages, row.trained_turns, row.source))
    return kept


def render_conversation(
    messages: Sequence[Message], tokenizer: PreTrainedTokenizerBase, chat_template: str = "model"
) -> str:
    """The whole conversation as text. "plain" writes `role: content` lines and ends each
    assistant turn with the EOS token, so generation after `assistant:` learns to stop."""
    if chat_template == "plain":
        eos = tokenizer.eos_token or ""
        return "".join(
            f"assistant: {m['content']}{eos}\n" if m["role"] == "assistant" else
            f"{m['role']}: {m['content']}\n"
            for m in messages
        )  # fmt: skip
    if chat_template != "model" or not getattr(tokenizer, "chat_template", None):
        render_prompt(messages, tokenizer, chat_template)  # raises the ConfigError RL gives
    text = tokenizer.apply_chat_template(template_messages(messages), tokenize=False)
    return str(text)


def assistant_spans(
    conversation: Conversation, tokenizer: PreTrainedTokenizerBase, chat_template: str = "model"
) -> tuple[str, list[tuple[int, int]]]:
    """(full text, [(start, end) character span of each trained assistant turn]).

    A turn's span starts where the prompt rendered up to it (with the generation prompt) ends
    and stops where the conversation rendered through it ends. Both renderings must be
    prefixes of the full text; a template that rewrites earlier turns raises `ValueError`.
    """
    messages = conversation.messages
    full = render_conversation(messages, tokenizer, chat_template)
    spans = []
    for turn in conversation.trained_turns:
        if chat_template == "plain":  # earlier assistant turns keep their EOS here
            prompt = render_conversation(messages[:turn], tokenizer, "plain") + "assistant:"
        else:
            prompt = render_prompt(messages[:turn], tokenizer, chat_template)
        through = render_conversation(messages[: turn + 1], tokenizer, chat_template)
        if not (through.startswith(prompt) and full.startswith(through)):
            raise ValueError(
                f"the chat template renders the conversation before assistant turn {turn} "
                "differently when more turns follow, so the turn cannot be located"
            )
        spans.append((len(prompt), len(through)))
    return full, spans


def encode_conversation(
    conversation: Conversation,
    tokenizer: PreTrainedTokenizerBase,
    chat_template: str = "model",
    end_ids: frozenset[int] | None = None,
) -> TokenizedConversation:
    """Token ids of the rendered conversation and the mask of trained assistant tokens.

    A token is in a turn's span when it starts inside it; the span is cut after its last
    end-of-turn token (`<|im_end|>`, EOS, ...), so the newline a template writes after the
    turn, which the model never generates, is not trained.
    """
    full, spans = assistant_spans(conversation, tokenizer, chat_template)
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])
    starts = [start for start, _ in encoded["offset_mapping"]]
    end_ids = end_of_turn_ids(tokenizer) if end_ids is None else end_ids
    mask = [False] * len(ids)
    for span_start, span_end in spans:
        inside = [i for i, s in enumerate(starts) if span_start <= s < span_end]
        ends = [i for i in inside if ids[i] in end_ids]
        if ends:
            inside = [i for i in inside if i <= ends[-1]]
        for i in inside:
            mask[i] = True
    return TokenizedConversation(conversation.id, tuple(ids), tuple(mask), conversation.source)


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """The EOS id plus chat end markers the vocabulary has (as the rollout engine stops on)."""
    marker_ids = tokenizer.convert_tokens_to_ids(list(END_OF_TURN_MARKERS))
    found = zip(END_OF_TURN_MARKERS, marker_ids, strict=True)
    ids = {
        i for marker, i in found if i is not None and tokenizer.convert_ids_to_tokens(i) == marker
    }
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


def tokenize_conversations(
    conversations: Sequence[Conversation],
    tokenizer: PreTrainedTokenizerBase,
    chat_template: str = "model",
    max_tokens: int = 0,
) -> list[TokenizedConversation]:
    """Encode every conversation; raise one `DatasetError` naming each row that cannot be
    located, has no trained token, or is longer than `max_tokens` (0 = no limit)."""
    encoded: list[TokenizedConversation] = []
    errors: list[RowError] = []
    end_ids = end_of_turn_ids(tokenizer)
    for conversation in conversations:
        file, _, line_text = conversation.source.rpartition(":")
        line = int(line_text) if line_text.isdigit() else 0
        try:
            row = encode_conversation(conversation, tokenizer, chat_template, end_ids)
        except ValueError as exc:
            errors.append(RowError(file, line, "messages", str(exc)))
            continue
        if max_tokens and len(row.input_ids) > max_tokens:
            message = f"conversation is {len(row.input_ids)} tokens; the limit is {max_tokens}"
            errors.append(RowError(file, line, "messages", message))
        elif not row.trained_tokens:
            errors.append(RowError(file, line, "messages", "no assistant token to train on"))
        else:
            encoded.append(row)
    if errors:
        raise DatasetError(errors)
    return encoded
