"""collect.py's inputs, read into one list of `Item`s: a prompt with or without its answer.

Accepted (docs/collect.md, Inputs):
* a prompt list: `.txt` (one prompt per line), or jsonl/csv/parquet/a dataset with a prompt
  column (`prompt`, `instruction`, `question` or `input`; others through `column_map`);
* rows that already hold an answer, kept with no call: `messages` ending with an assistant
  turn (chat logs, OpenAI fine-tuning JSONL), ShareGPT `conversations`, prompt + completion
  (`completion`/`response`/`answer`/`output`), alpaca;
* an OpenAI Batch API pair: the input file (`custom_id` + `body.messages`) and the output file
  (`custom_id` + `response.body.choices[0].message`), joined on `custom_id`; requests with no
  successful answer in the output are asked again through the service layer.
The format is decided per row, not per file: one JSONL may mix answered logs and bare prompts.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from llamaduo.data import SINGLE_SPLIT, load_split, load_splits
from llamaduo.errors import UsageError
from llamaduo.formats import MAPPABLE, SHAREGPT_ROLES

logger = logging.getLogger("llamaduo.collect")

PROMPT_COLUMNS = ("prompt", "instruction", "question", "input")
ANSWER_COLUMNS = ("completion", "response", "answer", "output")
SOURCE_ANSWERED = "answered"
SOURCE_PROMPT = "prompt"
SOURCE_BATCH = "batch_output"


@dataclass
class Item:
    """One prompt to keep. `turns` is the conversation up to the answer (system/user/...),
    `answer` the assistant reply when the input already holds one (then no call is made)."""

    turns: list[dict[str, str]]
    answer: Optional[str]
    category: Optional[str]
    prompt_id: Optional[str]
    source: str
    label: str

    @property
    def prompt(self) -> str:
        """The first user turn: the `prompt` column of the reference data."""
        return next((t["content"] for t in self.turns if t["role"] == "user"), "")


# ----------------------------------------------------------------------------- rows -> items


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _turns(value: Any, what: str) -> list[dict[str, str]]:
    """A `messages`/`conversations` cell as {role, content} turns (ShareGPT names mapped)."""
    if not isinstance(value, list):
        raise UsageError(f"{what}: expected a list of chat turns, got {type(value).__name__}")
    turns = []
    for turn in value:
        if not isinstance(turn, Mapping):
            raise UsageError(f"{what}: a chat turn is not an object: {turn!r:.80}")
        role = str(turn.get("role") or turn.get("from") or "").lower()
        role = SHAREGPT_ROLES.get(role, role)
        if role not in ("system", "user", "assistant"):
            raise UsageError(f"{what}: unknown chat role {role!r} (expected system, user or assistant)")
        turns.append({"role": role, "content": _text(turn.get("content", turn.get("value")))})
    return turns


def row_item(row: Mapping[str, Any], what: str, category_column: str) -> Optional[Item]:
    """The Item of one input row, or None for a row with no prompt at all (counted as empty)."""
    category = _text(row.get(category_column)) or None
    prompt_id = _text(row.get("prompt_id")) or None
    chat = row.get("messages") if row.get("messages") is not None else row.get("conversations")
    if chat is not None:
        turns = _turns(chat, what)
        answer = None
        if turns and turns[-1]["role"] == "assistant":
            answer = turns.pop()["content"] or None
        if not any(t["role"] == "user" and t["content"] for t in turns):
            return None
        return Item(turns, answer, category, prompt_id, SOURCE_ANSWERED if answer else SOURCE_PROMPT, what)
    prompt = next((_text(row.get(c)) for c in PROMPT_COLUMNS if _text(row.get(c))), "")
    if row.get("instruction") and _text(row.get("input")):  # alpaca: instruction + its input
        prompt = f"{_text(row['instruction'])}\n\n{_text(row['input'])}"
    if not prompt:
        return None
    answer = next((_text(row.get(c)) for c in ANSWER_COLUMNS if _text(row.get(c))), "") or None
    system = _text(row.get("system"))
    turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return Item(turns, answer, category, prompt_id, SOURCE_ANSWERED if answer else SOURCE_PROMPT, what)


def _mapped(row: Mapping[str, Any], column_map: Mapping[str, str]) -> dict[str, Any]:
    """Apply {our name: your column} to one row (the mapped column replaces ours)."""
    out = dict(row)
    for ours, theirs in column_map.items():
        if theirs in row and theirs != ours:
            out[ours] = out.pop(theirs)
    return out


# ----------------------------------------------------------------------------- sources


def read_prompts(ref: str, split: str, column_map: Optional[Mapping[str, str]],
                 category_column: str) -> tuple[list[Item], int]:
    """Items of `prompts_ds_id` (a .txt prompt list, any data file or folder, or a Hub id)
    and the number of rows without any prompt."""
    for ours in column_map or {}:
        if ours not in (*MAPPABLE, "question", "category"):
            raise UsageError(f"column_map key '{ours}' is not one of: {', '.join((*MAPPABLE, 'question', 'category'))}")
    path = Path(ref).expanduser()
    if path.suffix.lower() == ".txt":
        rows: Iterable[Mapping[str, Any]] = [{"prompt": line} for line in _txt_lines(path)]
        columns = ["prompt"]
    else:
        ds = _load_prompts_split(ref, split)
        rows, columns = ds, ds.column_names
    mapped = {**(column_map or {})}
    known = ("messages", "conversations", *PROMPT_COLUMNS)
    if not any(c in columns or c in mapped for c in known):
        raise UsageError(f"prompts dataset '{ref}' has no prompt column: expected one of {', '.join(known)} "
                         f"(present: {', '.join(columns)}); map yours with column_map, e.g. {{prompt: text}}")
    items, empty = [], 0
    for i, row in enumerate(rows):
        item = row_item(_mapped(row, mapped), f"{ref} row {i + 1}", category_column)
        if item is None:
            empty += 1
        else:
            items.append(item)
    return items, empty


def _load_prompts_split(ref: str, split: str) -> Any:
    """The split asked for; a source with one split only (a folder holding `train_sft.jsonl`,
    a Hub dataset with just `train`) serves any name, with a log line saying which it read."""
    what = "prompts dataset (prompts_ds_id)"
    splits = load_splits(ref, what=what)
    if split not in splits and len(splits) == 1:
        name = next(iter(splits))
        if name != SINGLE_SPLIT:
            logger.info("%s '%s' has no split '%s'; reading its only split '%s'", what, ref, split, name)
        split = name
    return load_split(ref, split, what=what)


def _txt_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise UsageError(f"prompts file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"prompts file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise UsageError(f"prompts file {path} holds no prompt")
    return lines


def _jsonl(path: str, what: str) -> list[dict]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"{what} not found: {path}")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as err:
            raise UsageError(f"{what} {path} line {n} is not JSON: {err}") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{what} {path} line {n} is not a JSON object")
        out.append(obj)
    return out


def read_batch_pair(input_path: str, output_path: Optional[str], category_column: str) -> tuple[list[Item], dict]:
    """Items from an OpenAI Batch API input file, answered from its output file where the
    output holds a successful reply for the same `custom_id`; plus counts for the summary."""
    requests = _jsonl(input_path, "batch input file (batch_input)")
    answers: dict[str, str] = {}
    failed = 0
    for obj in _jsonl(output_path, "batch output file (batch_output)") if output_path else []:
        reply = _batch_answer(obj)
        if reply is None:
            failed += 1
        else:
            answers[str(obj.get("custom_id"))] = reply
    items, seen = [], set()
    for n, req in enumerate(requests, 1):
        cid = str(req.get("custom_id") or "")
        what = f"batch input {input_path} line {n}"
        if not cid:
            raise UsageError(f"{what} has no custom_id")
        if cid in seen:
            raise UsageError(f"{what}: custom_id '{cid}' appears twice")
        seen.add(cid)
        body = req.get("body") if isinstance(req.get("body"), Mapping) else {}
        if "messages" not in body:
            raise UsageError(f"{what}: body.messages is missing (only /v1/chat/completions requests are read)")
        turns = _turns(body["messages"], what)
        if turns and turns[-1]["role"] == "assistant":
            turns.pop()
        if not any(t["role"] == "user" and t["content"] for t in turns):
            raise UsageError(f"{what}: body.messages has no user turn")
        category = _text(req.get(category_column) or (req.get("metadata") or {}).get(category_column)) or None
        answer = answers.get(cid)
        items.append(Item(turns, answer, category, None, SOURCE_BATCH if answer else SOURCE_PROMPT,
                          f"custom_id {cid}"))
    unmatched = len(set(answers) - seen)
    counts = {"requests": len(requests), "answered": sum(1 for i in items if i.answer),
              "failed_in_output": failed, "outputs_without_request": unmatched}
    if unmatched:
        logger.warning("batch output: %d answer(s) have a custom_id that is not in the input file; ignored", unmatched)
    return items, counts


def _batch_answer(obj: Mapping[str, Any]) -> Optional[str]:
    """The assistant text of one Batch API output line, or None for a failed request."""
    response = obj.get("response") if isinstance(obj.get("response"), Mapping) else {}
    if obj.get("error") or response.get("status_code", 200) != 200:
        return None
    choices = (response.get("body") or {}).get("choices") or []
    if not choices or not isinstance(choices[0], Mapping):
        return None
    content = (choices[0].get("message") or {}).get("content")
    return _text(content) or None
