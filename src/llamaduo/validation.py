"""Type checks on a stage's input columns, and UTF-8 checks on its text files, before any work.

Why: a candidate given as a list, dict, int or null used to be turned into text (`['a', 'b']`)
and paid for; `messages` given as a string failed deep inside a stage with an AttributeError;
non-UTF-8 bytes in a JSONL file surfaced as a UnicodeDecodeError traceback from pyarrow. Each
is the user's input problem and exits 2 with one line naming the first bad row and column.

The checks read the Arrow schema first (one type per column), so a correct dataset costs one
null count per column, not a pass over its rows.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

from datasets import Dataset, LargeList, List, Value

from llamaduo.errors import UsageError

logger = logging.getLogger("llamaduo.validation")

_TEXT_DTYPES = ("string", "large_string")


def describe(value: Any) -> str:
    """How a value's type reads in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _first_null(ds: Dataset, column: str) -> int | None:
    import pyarrow.compute as pc

    arr = ds.data.column(column)
    if arr.null_count == 0:
        return None
    return int(pc.index(pc.is_null(arr), True).as_py())


def _bad(what: str, row: int, column: str, value: Any, expected: str) -> UsageError:
    return UsageError(f"{what}: row {row} column '{column}' is {describe(value)}, expected {expected}; fix the input")


def check_text_columns(ds: Dataset, columns: Iterable[str], what: str, allow_null: bool = False) -> None:
    """Each column must hold strings (and no nulls unless `allow_null`). A string-typed Arrow
    column needs only a null count; any other type (including datasets' `Json` feature for a
    JSON column of mixed types) is scanned for its first non-string value."""
    for column in columns:
        if column not in ds.column_names:
            continue
        feature = ds.features[column]
        if isinstance(feature, Value) and feature.dtype in _TEXT_DTYPES:
            row = None if allow_null else _first_null(ds, column)
            if row is not None:
                raise _bad(what, row, column, None, "a string")
            continue
        for row, value in enumerate(ds[column]):
            if not (isinstance(value, str) or (value is None and allow_null)):
                raise _bad(what, row, column, value, "a string")


def _is_text(feature: Any) -> bool:
    return isinstance(feature, Value) and feature.dtype in _TEXT_DTYPES + ("null",)


#: the chat roles every stage (and every chat template) understands
ROLES = ("system", "user", "assistant")


def _message_problem(messages: Any) -> str | None:
    """Why a `messages` value is not a non-empty list of {role, content} text messages with a
    known role, or None. Each of these used to go into training data unnoticed (issue 23)."""
    if not isinstance(messages, list):
        return f"is {describe(messages)}, expected a list of {{role, content}} messages"
    if not messages:
        return "is an empty list, expected at least one {role, content} message"
    for msg in messages:
        if not isinstance(msg, dict):
            return f"holds {describe(msg)} where a {{role, content}} message belongs"
        if not isinstance(msg.get("role"), str):
            return f"has a message whose 'role' is {describe(msg.get('role'))}, expected a string"
        if msg["role"] not in ROLES:
            return f"has a message with the unknown role {msg['role']!r}, expected one of {', '.join(ROLES)}"
        if not isinstance(msg.get("content"), str):
            return (f"has a message without 'content'" if msg.get("content") is None else
                    f"has a message whose 'content' is {describe(msg.get('content'))}, expected a string")
    return None


def _all_valid_by_type(ds: Dataset, column: str) -> bool:
    """True when the Arrow column alone shows every row is fine (typed role/content, no null,
    no empty list, only known roles): the common case, checked without a pass over the rows."""
    import pyarrow.compute as pc

    feature = ds.features[column]
    inner = feature.feature if isinstance(feature, (List, LargeList)) else None
    if not (isinstance(inner, dict) and _is_text(inner.get("role")) and _is_text(inner.get("content"))):
        return False
    arr = ds.data.column(column)
    if arr.null_count or (len(arr) and pc.min(pc.list_value_length(arr)).as_py() == 0):
        return False
    flat = arr.combine_chunks().flatten()
    role, content = flat.field("role"), flat.field("content")
    return (role.null_count == 0 and content.null_count == 0
            and bool(pc.all(pc.is_in(role, value_set=pa_strings(ROLES))).as_py() in (True, None)))


def pa_strings(values: Sequence[str]) -> Any:
    import pyarrow as pa

    return pa.array(list(values), type=pa.string())


def check_messages_column(ds: Dataset, what: str, column: str = "messages", drop_invalid: bool = False) -> Dataset:
    """`messages` must be a non-empty list of {role, content} mappings with text content and a
    role among ROLES. A bad row exits 2 naming it; with `drop_invalid` (the stages'
    `drop_invalid_rows: true`) the bad rows are dropped instead and counted in a warning.
    Returns the dataset (without the dropped rows)."""
    if column not in ds.column_names or _all_valid_by_type(ds, column):
        return ds
    bad = []
    for row, messages in enumerate(ds[column]):
        problem = _message_problem(messages)
        if problem and not drop_invalid:
            raise UsageError(f"{what}: row {row} column '{column}' {problem}; fix the input, or set "
                             f"drop_invalid_rows: true to drop such rows")
        if problem:
            bad.append((row, problem))
    if not bad:
        return ds
    logger.warning("%s: dropped %d invalid row(s) of %d (drop_invalid_rows); the first, row %d: column '%s' %s",
                   what, len(bad), len(ds), bad[0][0], column, bad[0][1])
    dropped = {row for row, _ in bad}
    return ds.select([i for i in range(len(ds)) if i not in dropped])


def check_utf8_files(files: Sequence[str | Path], what: str) -> None:
    """Every line of every text file must be UTF-8; the first bad one is named."""
    for name in files:
        with open(name, "rb") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise UsageError(f"{what} file {name} line {lineno} is not UTF-8 text (byte "
                                     f"{line[err.start]:#04x} at column {err.start + 1}); re-save it as UTF-8") from None


SFT_TEXT_COLUMNS = ("prompt", "prompt_id", "category", "generator", "seed_prompt")


def check_sft_columns(ds: Dataset, what: str, drop_invalid: bool = False) -> Dataset:
    """An SFT dataset (reference, synthetic, merged): `messages` as chat turns, and the
    optional text columns as text or null (null ones are filled, and say so, downstream).
    Returns the dataset, without its invalid `messages` rows when `drop_invalid`."""
    ds = check_messages_column(ds, what, drop_invalid=drop_invalid)
    check_text_columns(ds, SFT_TEXT_COLUMNS, what, allow_null=True)
    if drop_invalid and len(ds) == 0:
        raise UsageError(f"{what}: no valid row is left after drop_invalid_rows")
    return ds
