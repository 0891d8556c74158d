"""Common chat-data formats (`messages`, `prompt_completion`, `alpaca`, `sharegpt`, `prompt`),
normalised to one `messages` column.

Every stage that reads reference data calls `to_messages`, so all of them accept the same
formats, detect them the same way and fail the same way (two formats at once without
`data_format`: exit 2, naming both). `column_map` maps other column names; every other column
is kept. The table of formats: docs/dataset_merge.md (Data formats).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Sequence

from datasets import Dataset

from llamaduo.errors import UsageError

logger = logging.getLogger("llamaduo.data")

# format -> columns that must all be present (detection order = preference when forced)
SIGNATURES: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "sharegpt": ("conversations",),
}
PROMPT_ONLY = "prompt"
# Common names of the answer next to a `prompt` column (HumanEval's is canonical_solution): read
# as `completion` without a column_map, first match wins, and logged.
ANSWER_SYNONYMS = ("response", "answer", "canonical_solution")
FORMATS = ("auto", *SIGNATURES, PROMPT_ONLY)
# the columns each format's rows are built from (dropped after conversion: they live in messages now)
SOURCE_COLUMNS = {"messages": (), "prompt_completion": ("completion",), "alpaca": ("instruction", "input", "output"),
                  "sharegpt": ("conversations",), PROMPT_ONLY: ()}
MAPPABLE = ("messages", "prompt", "completion", "instruction", "input", "output", "system", "conversations")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant",
                  "system": "system"}


def check_format_args(data_format: str, column_map: Optional[Mapping[str, Any]]) -> None:
    """Config-value checks, run before any data is read."""
    if data_format not in FORMATS:
        raise UsageError(f"data_format '{data_format}' is not one of: {', '.join(FORMATS)}")
    for ours, theirs in (column_map or {}).items():
        if ours not in MAPPABLE:
            raise UsageError(f"column_map key '{ours}' is not one of: {', '.join(MAPPABLE)} "
                             "(the map is {our name: your column})")
        if not isinstance(theirs, str) or not theirs:
            raise UsageError(f"column_map['{ours}'] must be a column name, got {theirs!r}")


def detect_format(columns: Sequence[str], what: str, data_format: str = "auto") -> str:
    """The format of a dataset with these columns; exit 2 when none or several match."""
    if data_format != "auto":
        needed = SIGNATURES.get(data_format, (PROMPT_ONLY,))
        missing = [c for c in needed if c not in columns]
        if missing:
            raise UsageError(f"{what}: data_format '{data_format}' needs column(s) {', '.join(missing)}; "
                             f"present: {', '.join(columns)} (map other names with column_map)")
        return data_format
    found = [name for name, needed in SIGNATURES.items() if all(c in columns for c in needed)]
    if len(found) > 1:
        raise UsageError(f"{what}: ambiguous data format, candidates: {', '.join(found)} (columns: "
                         f"{', '.join(columns)}); set data_format to one of them")
    if found:
        return found[0]
    if PROMPT_ONLY in columns:
        return PROMPT_ONLY
    raise UsageError(
        f"{what}: no known data format in columns {', '.join(columns)}; expected messages, prompt/completion, "
        "alpaca instruction/output or ShareGPT conversations (map other names with column_map, e.g. "
        "{prompt: question, completion: answer})")


def to_messages(ds: Dataset, what: str, data_format: str = "auto",
                column_map: Optional[Mapping[str, str]] = None, require_answer: bool = False) -> Dataset:
    """`ds` with a `messages` column built from its format; other columns are kept.

    `require_answer`: the stage needs an assistant turn (training, seeds), so a prompt-only
    dataset exits 2 here instead of failing later.
    """
    ds = _apply_column_map(ds, column_map or {}, what)
    ds = _answer_synonym(ds, what, data_format)
    fmt = detect_format(ds.column_names, what, data_format)
    logger.info("%s: data format %s", what, fmt)
    if require_answer and fmt == PROMPT_ONLY:
        raise UsageError(f"{what} has prompts but no answers (columns: {', '.join(ds.column_names)}); map the answer "
                         "column with column_map, e.g. {completion: answer}")
    if fmt == "messages":
        return ds
    convert = {"prompt_completion": _prompt_completion, "alpaca": _alpaca, "sharegpt": _sharegpt,
               PROMPT_ONLY: _prompt_only}[fmt]
    drop = [c for c in SOURCE_COLUMNS[fmt] if c in ds.column_names] + (["messages"] if "messages" in ds.column_names else [])
    if fmt in ("prompt_completion", PROMPT_ONLY) and len(ds) and isinstance(ds[0]["prompt"], list):
        drop.append("prompt")  # conversational prompts live in messages; `prompt` means a string elsewhere
    try:
        return ds.map(lambda row: {"messages": convert(row)}, remove_columns=drop, desc=f"{fmt} -> messages")
    except UsageError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise UsageError(f"{what}: rows do not match the {fmt} format: {err!r}") from err


def _apply_column_map(ds: Dataset, column_map: Mapping[str, str], what: str) -> Dataset:
    """Rename {our name: their column}; entries whose column this dataset lacks are skipped
    (one map serves every dataset of a stage, e.g. the original and the synthetic data)."""
    renames = {theirs: ours for ours, theirs in column_map.items() if theirs in ds.column_names and theirs != ours}
    clash = [ours for theirs, ours in renames.items() if ours in ds.column_names]
    if clash:
        ds = ds.remove_columns(clash)  # the mapped column replaces a same-named one, as asked
    if renames:
        logger.info("%s: column_map renames %s", what, ", ".join(f"{t} -> {o}" for t, o in renames.items()))
    return ds.rename_columns(renames) if renames else ds


def _answer_synonym(ds: Dataset, what: str, data_format: str) -> Dataset:
    """`prompt` + `response`/`answer`/`canonical_solution` is prompt/completion data."""
    cols = ds.column_names
    if data_format not in ("auto", "prompt_completion") or "prompt" not in cols or "completion" in cols:
        return ds
    if data_format == "auto" and any(c in cols for c in ("messages", "conversations", "instruction")):
        return ds  # another format's columns are there: leave the choice to detection
    synonym = next((c for c in ANSWER_SYNONYMS if c in cols), None)
    if synonym is None:
        return ds
    logger.info("%s: column '%s' read as the completion (set column_map to choose another)", what, synonym)
    return ds.rename_column(synonym, "completion")


def _turns(value: Any, role: str) -> list[dict[str, str]]:
    """A plain string is one turn of `role`; a list is already turns ({role, content})."""
    if isinstance(value, list):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    return [{"role": role, "content": "" if value is None else str(value)}]


def _prompt_completion(row: dict[str, Any]) -> list[dict[str, str]]:
    return _system(row) + _turns(row["prompt"], "user") + _turns(row["completion"], "assistant")


def _prompt_only(row: dict[str, Any]) -> list[dict[str, str]]:
    return _system(row) + _turns(row["prompt"], "user")


def _alpaca(row: dict[str, Any]) -> list[dict[str, str]]:
    user = str(row["instruction"] or "")
    if row.get("input"):
        user = f"{user}\n\n{row['input']}"
    return _system(row) + [{"role": "user", "content": user}, {"role": "assistant", "content": str(row["output"] or "")}]


def _sharegpt(row: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for turn in row["conversations"] or []:
        speaker = str(turn.get("from") or turn.get("role") or "").lower()
        if speaker not in SHAREGPT_ROLES:
            raise UsageError(f"ShareGPT turn with unknown 'from': {speaker!r} (known: {', '.join(SHAREGPT_ROLES)})")
        out.append({"role": SHAREGPT_ROLES[speaker], "content": str(turn.get("value", turn.get("content")) or "")})
    return out


def _system(row: dict[str, Any]) -> list[dict[str, str]]:
    system = row.get("system")
    return [{"role": "system", "content": str(system)}] if isinstance(system, str) and system.strip() else []


def data_format_field() -> Any:
    """The `data_format` config key, declared the same way by every stage that reads chat data."""
    from dataclasses import field

    return field(default="auto", metadata={
        "help": "format of the input data: auto (detected, and logged), messages, prompt_completion, alpaca, "
                "sharegpt or prompt; needed only when several formats' columns are present"})


def drop_invalid_rows_field() -> Any:
    """The `drop_invalid_rows` config key of the stages that read chat rows for training data."""
    from dataclasses import field

    return field(default=False, metadata={
        "help": "drop rows whose `messages` is empty, has a message without content or a role other than "
                "system/user/assistant (counted in a warning) instead of exiting 2 naming the first one"})


def column_map_field() -> Any:
    """The `column_map` config key: {our column name: your column name}."""
    from dataclasses import field

    return field(default=None, metadata={
        "help": "map your column names onto the known ones, {our name: your column}, e.g. "
                "{prompt: question, completion: canonical_solution}; our names: " + ", ".join(MAPPABLE)})
