"""Checks on every config value at load, for every stage's dataclasses (exit 2, one line).

Why here, generically, and not in each stage's `validate`: the held-out campaign of issue 23
found values no stage thought to check, and each failed only after paid calls or never:
`execution_timeout_s: nan` (a traceback after 4 judge calls), `max_cost_usd: nan` (a hang: every
comparison with NaN is false), a YAML list as a split name, a NUL byte in a split name, a split
name `../../x` (written outside the output folder), `eval_repeat: 1000000000` (80 MB/s of
planned jobs before the first call). One pass over every field of every config dataclass, run
by `config.parse_config` before the dataclass is built, refuses all of them:

* a float that is NaN or infinite, anywhere (also inside lists and mappings);
* a string with a NUL byte, anywhere;
* a value of another type for a field declared `str` / `Optional[str]` (a YAML list or mapping);
* an integer outside int64 (`99999999999999999999` wraps in bash, numpy and torch);
* a split name (a `*_split` / `*_splits` key) that is not a plain name: see `split_name_problem`;
* a number outside the field's declared bounds: `field(metadata={"min": 1, "max": 1000})`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from typing import Any, Mapping

from llamaduo.errors import UsageError

#: field metadata keys this module reads (config.py hides them from argparse)
BOUND_KEYS = ("min", "max")
INT64_MAX = 2**63 - 1
#: a split name as `datasets` accepts it (`\w+(\.\w+)*`), plus '-'; it becomes a file name
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")


def split_name_problem(value: Any, optional: bool = False) -> str | None:
    """Why `value` is not a plain split name, or None. A split name becomes a file name in the
    output folder (`<split>.jsonl`), so a separator or `..` would write outside it. An empty
    string is refused unless the key is optional (there '' means "none", e.g. first_ds_test_split)."""
    if value is None or (optional and value == ""):
        return None
    if not isinstance(value, str):
        return f"must be a split name (a string), got {_describe(value)}"
    if "\x00" in value:
        return "must not contain a NUL byte"
    if not value:
        return "must not be empty"
    if ".." in value or not _SPLIT_NAME.match(value):
        return (f"must be a plain split name (letters, digits, '_', '-', '.'; no path separator, no '..'), "
                f"got {value!r}")
    return None


def check_split_name(key: str, value: Any, optional: bool = False) -> None:
    """`split_name_problem` as a UsageError naming the key."""
    problem = split_name_problem(value, optional)
    if problem:
        raise UsageError(f"config key '{key}' {problem}")


def check_fields(dtype: type, values: Mapping[str, Any]) -> None:
    """Check each value of `values` that is a field of the dataclass `dtype` (see module doc)."""
    hints = _type_hints(dtype)
    for f in dataclasses.fields(dtype):
        if f.name in values:
            problem = field_problem(f, values[f.name], hints.get(f.name))
            if problem:
                raise UsageError(f"config key '{f.name}' {problem}")


def field_problem(f: dataclasses.Field, value: Any, hint: Any) -> str | None:
    """Why `value` cannot be the value of field `f` (declared type `hint`), or None."""
    if value is None:
        return None
    problem = _deep_problem(value)
    if problem:
        return problem
    if _is_str_hint(hint) and not isinstance(value, str):
        return f"expects a string, got {_describe(value)}"
    if f.name.endswith("_split"):
        return split_name_problem(value, optional=_allows_none(hint))
    if f.name.endswith("_splits"):
        items = value if isinstance(value, (list, tuple)) else [value]
        return next((p for p in (split_name_problem(v) for v in items) if p), None)
    return _bounds_problem(f.metadata, value)


def _deep_problem(value: Any) -> str | None:
    """NaN/inf floats, NUL bytes and out-of-int64 integers, also nested in lists and mappings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if isinstance(value, int) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        return f"is too large ({value}); the most is {INT64_MAX}"
    if isinstance(value, str) and "\x00" in value:
        return "must not contain a NUL byte"
    if isinstance(value, Mapping):
        return next((p for p in map(_deep_problem, [*value.keys(), *value.values()]) if p), None)
    if isinstance(value, (list, tuple)):
        return next((p for p in map(_deep_problem, value) if p), None)
    return None


def _bounds_problem(metadata: Mapping[str, Any], value: Any) -> str | None:
    lo, hi = metadata.get("min"), metadata.get("max")
    if (lo is None and hi is None) or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if lo is not None and hi is not None:
            return f"must be within {lo:,}-{hi:,}, got {value:,}"
        return f"must be >= {lo:,}, got {value:,}" if lo is not None else f"must be <= {hi:,}, got {value:,}"
    return None


@functools.lru_cache(maxsize=None)
def _type_hints(dtype: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(dtype)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: fall back to the declared objects
        return {f.name: f.type for f in dataclasses.fields(dtype) if not isinstance(f.type, str)}


def _union_args(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _is_str_hint(hint: Any) -> bool:
    """`str` or `Optional[str]` exactly (a `dict | str` field of TrainingArguments takes both)."""
    return hint is not None and {a for a in _union_args(hint) if a is not type(None)} == {str}


def _allows_none(hint: Any) -> bool:
    return type(None) in _union_args(hint)


def _describe(value: Any) -> str:
    """Like validation.describe, without importing `datasets` (light stages' --help stays fast)."""
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                       (Mapping, "a mapping"), ((list, tuple), "a list")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


#: the most (row, repeat) items one run may plan: each becomes an object in memory (a judge job,
#: a generation work item) before the first call, so `eval_repeat`/`repeat` times a large dataset
#: is refused here rather than found as a machine out of memory (10 M items are several GB)
MAX_PLANNED_ITEMS = 10_000_000


def check_planned(what: str, rows: int, repeats: int, key: str) -> None:
    """Exit 2 when `rows` x `repeats` is over MAX_PLANNED_ITEMS, before the plan is built."""
    if rows * repeats > MAX_PLANNED_ITEMS:
        raise UsageError(f"{what}: {rows:,} rows x {key}={repeats:,} = {rows * repeats:,} items, over the limit of "
                         f"{MAX_PLANNED_ITEMS:,} per run; lower {key} or split the dataset")
