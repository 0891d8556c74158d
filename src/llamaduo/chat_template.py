"""Chat templates for training: pick the template, check the conversations, and tokenize them
so that only the assistant's replies carry a loss.

WHY not TRL's `assistant_only_loss`: it needs `{% generation %}` markers that most instruct
templates lack. Rendering each conversation prefix by prefix works with any template, and the
prompt part is tokenized exactly as batch inference tokenizes it. The result (`input_ids`,
`labels`) goes to SFTTrainer as is. Details: docs/finetune.md (Loss masking).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

from llamaduo.errors import UsageError

logger = logging.getLogger("llamaduo.chat_template")

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


# --------------------------------------------------------------------------- choosing a template


def load_chat_template(value: str | None) -> str | None:
    """A configured template: a path to a `.jinja` file, a tokenizer folder, or inline Jinja.

    Returns None when nothing is configured (the tokenizer's own template is used).
    """
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if path.is_dir():
        for name in ("chat_template.jinja",):
            if (path / name).is_file():
                return (path / name).read_text(encoding="utf-8")
        from transformers import AutoTokenizer

        tpl = AutoTokenizer.from_pretrained(str(path)).chat_template
        if not tpl:
            raise UsageError(f"chat template source {path} is a folder whose tokenizer has no chat template")
        return tpl
    if "{%" in value or "{{" in value:
        return value
    raise UsageError(f"chat template '{value}' is neither an existing .jinja file or tokenizer folder "
                     f"nor inline Jinja text")


def apply_template_choice(tokenizer: Any, configured: str | None, source: str) -> str:
    """Set the configured template on the tokenizer (so `save_pretrained` stores it with the
    model), or check that the tokenizer has one; return the template in use."""
    if configured:
        tokenizer.chat_template = configured
        logger.info("using the chat template configured in %s", source)
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError("the tokenizer has no chat template; set `chat_template` (inline Jinja or a .jinja "
                         "file) or `chat_template_path` in the config")
    return tokenizer.chat_template


# --------------------------------------------------------------------------- checking conversations


def check_conversations(rows: Iterable[Any], where: str) -> None:
    """Every row must be a list of {role, content} turns with at least one assistant reply.

    Runs before any model load, so a wrong dataset costs a second, not a training run.
    """
    for i, messages in enumerate(rows):
        problem = conversation_problem(messages)
        if problem:
            raise UsageError(f"{where}: row {i}: {problem}")


def conversation_problem(messages: Any) -> str | None:
    if not isinstance(messages, (list, tuple)) or not messages:
        return "`messages` must be a non-empty list of {role, content} turns"
    has_reply = False
    for turn in messages:
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            return f"every turn needs `role` and `content`, got {turn!r:.80}"
        if turn["role"] not in ROLES:
            return f"unknown role {turn['role']!r}; expected one of {', '.join(ROLES)}"
        if not isinstance(turn["content"], str):
            return f"`content` must be text, got {type(turn['content']).__name__}"
        has_reply = has_reply or (turn["role"] == "assistant" and bool(turn["content"].strip()))
    if not has_reply:
        return "no assistant turn with text: there is nothing to learn from this conversation"
    return None


# --------------------------------------------------------------------------- tokenizing


def _render(tokenizer: Any, messages: Sequence[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_segments(tokenizer: Any, messages: Sequence[dict]) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, is_reply) pieces, in order.

    Raises UsageError when the template does not render prefixes consistently (then no mask
    can be trusted, and a configured template is the fix).
    """
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(done) or not through.startswith(prompt):
            raise UsageError(
                "the chat template does not render conversations prefix by prefix, so the assistant "
                "replies cannot be located; configure a template (`chat_template`) that does")
        segments.append((prompt[len(done):], False))
        segments.append((through[len(prompt):], True))
        done = through
    full = _render(tokenizer, messages, add_generation_prompt=False)
    if not full.startswith(done):
        raise UsageError("the chat template renders the full conversation differently from its prefixes; "
                         "configure a template (`chat_template`) that does not")
    if full[len(done):]:
        segments.append((full[len(done):], False))
    return segments


def tokenize_conversation(tokenizer: Any, messages: Sequence[dict], *, train_on_prompt: bool = False,
                          add_special_tokens: bool = False) -> dict[str, list[int]]:
    """`input_ids` and `labels` for one conversation: labels are the token ids on each
    assistant reply (up to and including its end-of-turn token) and -100 elsewhere.

    Formatting the template puts *after* the end-of-turn token (ChatML's trailing newline)
    is not trained: the model stops at the end-of-turn token at inference and never sees it.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    first = True
    for text, is_reply in assistant_segments(tokenizer, messages):
        ids = tokenizer(text, add_special_tokens=add_special_tokens and first)["input_ids"]
        first = False
        if is_reply:
            keep = _without_trailing_whitespace(tokenizer, ids)
            input_ids += ids
            labels += ids[:keep] + [IGNORE_INDEX] * (len(ids) - keep)
        else:
            input_ids += ids
            labels += list(ids) if train_on_prompt else [IGNORE_INDEX] * len(ids)
    return {"input_ids": input_ids, "labels": labels}


def _without_trailing_whitespace(tokenizer: Any, ids: list[int]) -> int:
    """Length of `ids` without the trailing tokens that decode to whitespace only."""
    keep = len(ids)
    while keep > 0 and not tokenizer.decode(ids[keep - 1:keep]).strip():
        keep -= 1
    return keep


def tokenize_dataset(dataset: Any, tokenizer: Any, *, train_on_prompt: bool, add_special_tokens: bool,
                     num_proc: int | None, desc: str, max_length: int | None = None) -> Any:
    """Map a `messages` dataset to `input_ids`/`labels` (all other columns dropped).

    `max_length` truncates as `truncate_tokenized` does; only needed where TRL does not
    truncate itself (padding-free training without packing).
    """
    def _map(row: dict) -> dict:
        return tokenize_conversation(tokenizer, row["messages"], train_on_prompt=train_on_prompt,
                                     add_special_tokens=add_special_tokens)

    out = dataset.map(_map, remove_columns=dataset.column_names, num_proc=num_proc, desc=desc)
    return truncate_tokenized(out, max_length, num_proc) if max_length else out


def truncate_tokenized(dataset: Any, max_length: int, num_proc: int | None) -> Any:
    """Cut tokenized rows to `max_length` (keeping the start) and drop rows left without any
    trained token, as TRL does; for the paths where TRL does not truncate itself."""
    out = dataset.map(lambda row: {k: row[k][:max_length] for k in ("input_ids", "labels")}, num_proc=num_proc,
                      desc="Truncating to max_length")
    return out.filter(lambda row: any(t != IGNORE_INDEX for t in row["labels"]), num_proc=num_proc)


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The token ids that end an assistant reply under this template (eos first): generation
    must stop on them. Found by rendering a probe reply, so it works for ChatML, Gemma
    (`<end_of_turn>`), Llama 3 (`<|eot_id|>`) and the rest without a per-model table."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "probe"}]
    try:
        reply = next(t for t, is_reply in assistant_segments(tokenizer, probe) if is_reply)
    except (UsageError, StopIteration, Exception):  # noqa: BLE001 - the eos id alone is still right
        return ids
    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    keep = _without_trailing_whitespace(tokenizer, reply_ids)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if keep and reply_ids[keep - 1] in special and reply_ids[keep - 1] not in ids:
        ids.append(int(reply_ids[keep - 1]))
    return ids
