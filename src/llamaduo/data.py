"""Resolve a dataset reference to a split, and check it holds what a stage needs.

A reference is any of:
* a local `save_to_disk` folder (a DatasetDict, or a single Dataset);
* a local folder of data files named after their splits (`train_sft.jsonl`,
  `test_sft-00000-of-00001.parquet`, or the Hub layout `data/<split>-*.parquet`);
* a local file or glob (json, jsonl, parquet, csv, arrow): a single split;
* a Hugging Face Hub dataset id, with an optional revision.

Every problem is a `UsageError` (exit 2) raised before any model is loaded, because a typo in a
split or column name should cost a second, not a model load or a paid API call.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import datasets
from datasets import Dataset, DatasetDict

from llamaduo.errors import UsageError

logger = logging.getLogger("llamaduo.data")

REFERENCE_COLUMNS = ("prompt", "prompt_id", "messages", "category")
RESPONSE_COLUMNS = ("instructions", "target_responses", "candidate_responses", "model_id", "model_sha")
SYNTH_COLUMNS = ("generator", "prompt_id", "prompt", "seed_prompt", "messages", "category")
# The original README documented the synthetic columns in the plural; every reader accepts both.
PLURAL_SYNTH_COLUMNS = {"generators": "generator", "prompt_ids": "prompt_id", "prompts": "prompt",
                        "seed_prompts": "seed_prompt", "categories": "category"}

_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
_SHARD_SUFFIX = re.compile(r"-\d{5}-of-\d{5}$|-\d+$")
SINGLE_SPLIT = "__single__"


def load_split(
    ref: str,
    split: str,
    *,
    revision: str | None = None,
    required_columns: Sequence[str] = (),
    what: str = "dataset",
) -> Dataset:
    """Load one split of a dataset reference and check its columns and size.

    A single-split source (one file, a glob, a saved `Dataset`) serves any split name, so
    `test_ds_id: prompts.jsonl` works without renaming the file.
    """
    splits = load_splits(ref, revision=revision, what=what)
    if SINGLE_SPLIT in splits:
        ds = splits[SINGLE_SPLIT]
    else:
        ds = splits[resolve_split_name(splits, split, ref, what)]
    check_columns(ds, required_columns, f"{what} '{ref}' split '{split}'")
    if len(ds) == 0:
        raise UsageError(f"{what} '{ref}' split '{split}' is empty")
    return ds


# The LlamaDuo/alignment-handbook default split names, and the plain names most Hub datasets use.
SPLIT_FALLBACKS = {"train_sft": "train", "test_sft": "test"}


def resolve_split_name(splits: Iterable[str], split: str, ref: str, what: str = "dataset") -> str:
    """`split` when the dataset has it; else the plain `train`/`test` for the default
    `train_sft`/`test_sft` (logged, so a run's log says which split it read). WHY: a plain HF
    dataset (train/test) would otherwise need 3-4 split flags per stage."""
    names = set(splits)
    if split in names:
        return split
    fallback = SPLIT_FALLBACKS.get(split)
    if fallback and fallback in names:
        logger.info("%s '%s' has no split '%s': using its '%s' split", what, ref, split, fallback)
        return fallback
    raise UsageError(f"{what} '{ref}' has no split '{split}'; existing splits: {', '.join(sorted(names))}")


def load_splits(ref: str, *, revision: str | None = None, what: str = "dataset") -> dict[str, Dataset]:
    """All splits of a reference, keyed by name (`SINGLE_SPLIT` for single-split sources)."""
    if not ref:
        raise UsageError(f"no {what} given")
    path = Path(ref).expanduser()
    if path.is_dir():
        return _load_local_dir(path, what)
    if path.is_file() or glob.has_magic(ref):
        return {SINGLE_SPLIT: _load_files(sorted(glob.glob(str(path))) or [str(path)], ref, what)}
    if _looks_like_path(ref):
        raise UsageError(f"{what} path not found: {ref}")
    return _load_hub(ref, revision, what)


def available_splits(ref: str, revision: str | None = None) -> list[str]:
    """Split names of a reference; empty for a single-split source."""
    return sorted(s for s in load_splits(ref, revision=revision) if s != SINGLE_SPLIT)


def check_columns(ds: Dataset, required: Iterable[str], what: str) -> None:
    """Fail up front, naming the missing columns and the ones that are there."""
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise UsageError(
            f"{what} is missing column(s) {', '.join(missing)}; present columns: {', '.join(ds.column_names)}"
        )


def canonical_synth_columns(ds: Dataset) -> Dataset:
    """Rename the plural spellings (`PLURAL_SYNTH_COLUMNS`) to the singular names every stage
    writes; a plural column whose singular is also present is left as it is."""
    renames = {old: new for old, new in PLURAL_SYNTH_COLUMNS.items()
               if old in ds.column_names and new not in ds.column_names}
    return ds.rename_columns(renames) if renames else ds


def normalize_text(text: str) -> str:
    """Lower-case and collapse whitespace: the key for exact-duplicate checks."""
    return " ".join(str(text).lower().split())


def prompt_id_for(text: str) -> str:
    """A stable id for a prompt: sha256 of the stripped text (the same text -> the same id)."""
    return hashlib.sha256(str(text).strip().encode("utf-8")).hexdigest()


def first_user_message(messages: Sequence[dict[str, Any]] | None) -> str:
    """The first user turn of a chat, or '' when there is none."""
    for msg in messages or []:
        if msg.get("role") == "user":
            return str(msg.get("content") or "")
    return ""


def assistant_reply(messages: Sequence[dict[str, Any]] | None) -> str:
    """The first assistant turn of a chat, or '' when there is none."""
    for msg in messages or []:
        if msg.get("role") == "assistant":
            return str(msg.get("content") or "")
    return ""


# --------------------------------------------------------------------------- resolution


def _looks_like_path(ref: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else is meant as a local path."""
    return (
        ref.startswith((".", "/", "~"))
        or ref.count("/") > 1
        or Path(ref).suffix.lower() in _BUILDERS
        or os.sep in ref and not re.fullmatch(r"[\w.-]+/[\w.-]+", ref)
    )


def _load_local_dir(path: Path, what: str) -> dict[str, Dataset]:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as err:  # noqa: BLE001 - e.g. datasets' IndexError on a saved empty dataset
            raise UsageError(f"{what} folder {path} could not be read (is it empty?): {err!r}") from err
        return dict(loaded) if isinstance(loaded, DatasetDict) else {SINGLE_SPLIT: loaded}
    groups = _split_files(path)
    if not groups:
        raise UsageError(
            f"{what} folder {path} holds no save_to_disk dataset and no data files "
            f"({', '.join(sorted(_BUILDERS))}) named after their splits"
        )
    return {split: _load_files(files, f"{path}:{split}", what) for split, files in groups.items()}


def _split_files(path: Path) -> dict[str, list[str]]:
    """Group `<split>.ext` / `<split>-00000-of-00001.ext` files (also under `data/`) by split."""
    groups: dict[str, list[str]] = defaultdict(list)
    for folder in (path, path / "data"):
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if f.is_file() and f.suffix.lower() in _BUILDERS:
                groups[_SHARD_SUFFIX.sub("", f.stem)].append(str(f))
    return dict(groups)


def _load_files(files: list[str], ref: str, what: str) -> Dataset:
    suffixes = {Path(f).suffix.lower() for f in files}
    if len(suffixes) != 1 or next(iter(suffixes)) not in _BUILDERS:
        raise UsageError(f"{what} '{ref}': unsupported or mixed file types {sorted(suffixes)}; "
                         f"use one of {', '.join(sorted(_BUILDERS))}")
    builder = _BUILDERS[suffixes.pop()]
    if builder in ("json", "csv"):  # pyarrow would fail later, with a traceback, on bad bytes
        from llamaduo.validation import check_utf8_files

        check_utf8_files(files, what)
    try:
        return datasets.load_dataset(builder, data_files=files, split="train")
    except Exception as err:  # noqa: BLE001 - any parse failure is the user's input problem
        if "corresponds to no data" in str(err):
            raise UsageError(f"{what} '{ref}' is empty") from err
        raise UsageError(f"{what} '{ref}' could not be read as {builder}: {err}") from err


def _load_hub(ref: str, revision: str | None, what: str) -> dict[str, Dataset]:
    from llamaduo.hub import ensure_hub_reachable, hub_offline  # the one module that knows how to talk to the Hub

    if hub_offline():
        from llamaduo.hub_cache import cached_dataset_dir

        cached = cached_dataset_dir(ref, revision)
        if cached is not None:
            logger.info("%s '%s': HF_HUB_OFFLINE is set; using the cached copy in %s", what, ref, cached)
            return _load_local_dir(cached, what)
    ensure_hub_reachable(f"{what} '{ref}'")
    try:
        loaded = datasets.load_dataset(ref, revision=revision)
    except Exception as err:  # noqa: BLE001
        raise UsageError(f"{what} '{ref}' could not be loaded from the Hub: {err}") from err
    return dict(loaded) if isinstance(loaded, DatasetDict) else {SINGLE_SPLIT: loaded}
