"""Turn test-split rows into chat prompts, reference answers and token ids.

A row gives its prompt through `messages` (the first user turn, with a system turn if one comes
first) or through a plain `prompt` column. The reference answer (`target_responses`) is the
first assistant turn of `messages`, else a `response`/`completion` column, else empty.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

from datasets import Dataset

from llamaduo.data import assistant_reply, first_user_message, prompt_id_for
from llamaduo.errors import UsageError

logger = logging.getLogger("llamaduo.inference")

PROMPT_COLUMNS = ("messages", "prompt")
_TARGET_COLUMNS = ("response", "completion", "target_responses")


@dataclass(frozen=True)
class PromptRecord:
    """One test prompt. `chat` is what the model sees; `instruction` is the user text."""

    row_index: int
    prompt_id: str
    instruction: str
    target: str
    chat: tuple[dict[str, str], ...]


@dataclass(frozen=True)
class WorkItem:
    """One sample to generate: a prompt's token ids, its repeat index and its own seed."""

    row_index: int
    prompt_id: str
    repeat_index: int
    input_ids: tuple[int, ...] = field(repr=False)
    seed: int

    @property
    def key(self) -> tuple[int, int]:
        return (self.row_index, self.repeat_index)


def check_prompt_columns(ds: Dataset, what: str) -> None:
    """Exit 2 before any model load when the split has neither prompt column."""
    if not any(c in ds.column_names for c in PROMPT_COLUMNS):
        raise UsageError(
            f"{what} has neither a 'messages' nor a 'prompt' column, so there is nothing to prompt "
            f"the model with; present columns: {', '.join(ds.column_names)}"
        )


def prompt_records(ds: Dataset, what: str = "test dataset") -> list[PromptRecord]:
    """One PromptRecord per row, in dataset order."""
    check_prompt_columns(ds, what)
    records = []
    for i, row in enumerate(ds):
        records.append(_record(i, row, what))
    return records


def _record(i: int, row: dict[str, Any], what: str) -> PromptRecord:
    messages = row.get("messages") or []
    instruction = first_user_message(messages) if messages else ""
    if not instruction and row.get("prompt"):
        instruction = str(row["prompt"])
    if not instruction.strip():
        raise UsageError(f"{what} row {i} has no user message and no prompt text")
    system = _leading_system(messages)
    chat = ({"role": "system", "content": system},) if system else ()
    chat += ({"role": "user", "content": instruction},)
    target = assistant_reply(messages) if messages else ""
    if not target:
        target = next((str(row[c]) for c in _TARGET_COLUMNS if row.get(c)), "")
    prompt_id = str(row.get("prompt_id") or prompt_id_for(instruction))
    return PromptRecord(i, prompt_id, instruction, target, chat)


def _leading_system(messages: Sequence[dict[str, Any]]) -> str:
    """The system turn before the first user turn, if any."""
    for msg in messages:
        if msg.get("role") == "system":
            return str(msg.get("content") or "")
        if msg.get("role") == "user":
            return ""
    return ""


def tokenize_prompts(records: Sequence[PromptRecord], tokenizer, batch_size: int) -> list[tuple[int, ...]]:
    """Render each chat with the tokenizer's template (+ generation prompt) and tokenize.

    Done in chunks of `batch_infer_data_preprocess_bs` (the original key's meaning). The
    template already writes any special tokens as text, so none are added again.
    """
    out: list[tuple[int, ...]] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        texts = [tokenizer.apply_chat_template(list(r.chat), add_generation_prompt=True, tokenize=False)
                 for r in chunk]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        out.extend(tuple(ids) for ids in encoded)
    return out
