"""The fine-tuning data: `dataset_mixer` (alignment-handbook style) resolved with `llamaduo.data`.

Semantics follow the alignment-handbook the original project used: every dataset in the mixer
contributes `fraction x rows` of each *train* split (the first rows, after a seeded shuffle), and
all of each *test* split; the train parts are concatenated and shuffled with the run's seed.
A split counts as train or test by its name containing "train" or "test".
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from datasets import Dataset, Features, Value, concatenate_datasets

from llamaduo.chat_template import check_conversations, conversation_problem
from llamaduo.data import load_split
from llamaduo.formats import to_messages
from llamaduo.errors import UsageError

logger = logging.getLogger("llamaduo.finetune")


@dataclass
class MixedData:
    """The train (and optional eval) rows, plus what went in, for the model card."""

    train: Dataset
    eval: Dataset | None
    sources: list[dict[str, Any]] = field(default_factory=list)


def resolve_mixer(dataset_mixer: Mapping[str, Any] | None, dataset_id: str | None) -> dict[str, float]:
    """`dataset_id` (one reference, fraction 1.0) overrides `dataset_mixer`; check the fractions."""
    if dataset_id:
        if dataset_mixer:
            logger.info("dataset_id=%s overrides dataset_mixer %s", dataset_id, dict(dataset_mixer))
        return {dataset_id: 1.0}
    if not dataset_mixer:
        raise UsageError("no training data: set dataset_mixer (a mapping of dataset reference to fraction, "
                         "e.g. {\"data/demo\": 1.0}) or dataset_id")
    mixer: dict[str, float] = {}
    for ref, frac in dataset_mixer.items():
        if isinstance(frac, bool) or not isinstance(frac, (int, float)):
            raise UsageError(f"dataset_mixer['{ref}'] must be a number in (0, 1], got {frac!r}")
        if not 0.0 < float(frac) <= 1.0:
            raise UsageError(f"dataset_mixer['{ref}'] = {frac}: fractions must be in (0, 1]")
        mixer[str(ref)] = float(frac)
    return mixer


def classify_splits(splits: Sequence[str]) -> tuple[list[str], list[str]]:
    """(train splits, test splits); any other name is a usage error."""
    train = [s for s in splits if "train" in s]
    test = [s for s in splits if "test" in s and "train" not in s]
    other = [s for s in splits if s not in train and s not in test]
    if other:
        raise UsageError(f"dataset_splits {other}: each split name must contain 'train' or 'test' "
                         f"(e.g. train_sft, test_sft)")
    if not train:
        raise UsageError(f"dataset_splits {list(splits)} has no train split (a name containing 'train')")
    return train, test


def split_roles(splits: Sequence[str], train_split: str | None = None,
                test_split: str | None = None) -> tuple[list[str], list[str]]:
    """(train splits, test splits): TRL's `dataset_train_split`/`dataset_test_split` name a role
    whatever the split is called; otherwise the names in `dataset_splits` decide."""
    if not (train_split or test_split):
        return classify_splits(splits)
    train = [train_split] if train_split else [s for s in splits if "train" in s]
    test = [test_split] if test_split else [s for s in splits if "test" in s and "train" not in s]
    if not train:
        raise UsageError(f"dataset_splits {list(splits)} has no train split; set dataset_train_split")
    return train, test


def load_mixed(mixer: Mapping[str, float], splits: Sequence[str], *, seed: int, want_eval: bool,
               data_format: str = "auto", column_map: Mapping[str, str] | None = None,
               drop_invalid_rows: bool = False, train_split: str | None = None,
               test_split: str | None = None) -> MixedData:
    """Load, check and mix every dataset; raises UsageError on any bad input (before model load)."""
    train_splits, test_splits = split_roles(splits, train_split, test_split)
    train_parts: list[Dataset] = []
    eval_parts: list[Dataset] = []
    sources: list[dict[str, Any]] = []
    for ref, frac in mixer.items():
        for split in train_splits:
            ds = _load_messages(ref, split, data_format, column_map, drop_invalid_rows)
            n = max(1, int(frac * len(ds)))
            ds = ds.shuffle(seed=seed).select(range(n)) if n < len(ds) else ds
            train_parts.append(ds)
            sources.append({"dataset": ref, "split": split, "fraction": frac, "rows": len(ds)})
        if want_eval:
            for split in test_splits:
                ds = _load_messages(ref, split, data_format, column_map, drop_invalid_rows)
                eval_parts.append(ds)
                sources.append({"dataset": ref, "split": split, "fraction": 1.0, "rows": len(ds)})
    train = concatenate_datasets(train_parts).shuffle(seed=seed)
    evaluation = concatenate_datasets(eval_parts) if eval_parts else None
    return MixedData(train=train, eval=evaluation, sources=sources)


def _load_messages(ref: str, split: str, data_format: str = "auto",
                   column_map: Mapping[str, str] | None = None, drop_invalid_rows: bool = False) -> Dataset:
    what = f"training dataset '{ref}' split '{split}'"
    ds = to_messages(load_split(ref, split, what="training dataset"), what, data_format, column_map,
                     require_answer=True)
    if drop_invalid_rows:
        ds = drop_invalid_conversations(ds, what)
    check_conversations(ds["messages"], f"training dataset '{ref}' split '{split}'")
    # Only role/content, as plain strings: datasets from different sources (extra keys such
    # as `name`, other string types) must concatenate into one schema.
    return ds.select_columns(["messages"]).map(
        lambda row: {"messages": [{"role": str(m["role"]), "content": str(m["content"])} for m in row["messages"]]},
        features=_MESSAGES, desc=f"Reading {ref}:{split}")


_MESSAGES = Features({"messages": [{"role": Value("string"), "content": Value("string")}]})


def drop_invalid_conversations(ds: Dataset, what: str) -> Dataset:
    """`drop_invalid_rows: true`: the rows `check_conversations` would refuse are dropped and
    counted (a warning names the first one and why); none left is still exit 2."""
    problems = [(i, conversation_problem(m)) for i, m in enumerate(ds["messages"])]
    bad = [(i, p) for i, p in problems if p]
    if not bad:
        return ds
    if len(bad) == len(ds):
        raise UsageError(f"{what}: no valid row is left after drop_invalid_rows (row 0: {bad[0][1]})")
    logger.warning("%s: dropped %d invalid row(s) of %d (drop_invalid_rows); the first, row %d: %s",
                   what, len(bad), len(ds), bad[0][0], bad[0][1])
    dropped = {i for i, _ in bad}
    return ds.select([i for i in range(len(ds)) if i not in dropped])
