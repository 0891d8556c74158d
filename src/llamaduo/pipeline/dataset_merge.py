"""dataset_merge stage: original + synthetic data -> one SFT dataset (`train_sft`, `test_sft`).

Both train splits are aligned to the synthetic-data columns, concatenated, stripped of exact
duplicates and of rows whose prompt equals a test prompt (such a row would inflate every later
score). Every drop and fill is counted and logged; details: docs/dataset_merge.md.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from datasets import Dataset, Value

from llamaduo.config import config_to_dict, parse_config
from llamaduo.data import (SYNTH_COLUMNS, canonical_synth_columns, first_user_message, load_split,
                           normalize_text, prompt_id_for)
from llamaduo.errors import EXIT_CODES_HELP, EXIT_OK, UsageError
from llamaduo.formats import check_format_args, column_map_field, data_format_field, drop_invalid_rows_field, to_messages
from llamaduo.logging_setup import setup_logging
from llamaduo.hub import check_push_possible, dataset_output_plan, save_output
from llamaduo.outputs import OutputPlan, guarded_output
from llamaduo.validation import check_sft_columns
from llamaduo.peak_rss import peak_rss_mb

logger = logging.getLogger("llamaduo.dataset_merge")

DESCRIPTION = """Merge two SFT datasets (original + synthetic) into train_sft/test_sft, without exact
duplicates or test prompts. Step 5 of the LlamaDuo loop.

Example:
  python dataset_merge.py --from-config config/dataset_merge.yaml --second-ds-id outputs/synth
"""

MISSING = None  # the value HF users expect for "not known" (was the string "[missing]" before 2026-12)


@dataclass
class MergeArgs:
    """Merge two SFT datasets (e.g. the original and a synthetic one) into one."""

    first_ds_id: Optional[str] = field(default=None, metadata={"help": "first dataset: Hub id, local folder or file"})
    first_ds_train_split: str = field(default="train_sft", metadata={
        "help": "train split of the first dataset (train_sft falls back to train when absent)"})
    first_ds_test_split: Optional[str] = field(
        default="test_sft", metadata={"help": "test split of the first dataset ('' to have no test split; test_sft falls back to test)"})
    second_ds_id: Optional[str] = field(default=None, metadata={"help": "second dataset: Hub id, local folder or file"})
    second_ds_train_split: str = field(default="train_sft", metadata={
        "help": "train split of the second dataset (train_sft falls back to train when absent)"})
    second_ds_test_split: Optional[str] = field(
        default=None, metadata={"help": "test split of the second dataset, added to the result's test split"})
    push_result_ds_to_hf_hub: bool = field(default=False, metadata={"help": "also push the result to the Hub"})
    result_ds_id: Optional[str] = field(
        default=None, metadata={"help": "result: a local folder (push off) or a Hub dataset repo id (push on)"})
    second_ds_optional: bool = field(
        default=False, metadata={"help": "treat a missing or empty second train split as no new rows (with a "
                                         "warning) instead of an error: data_gen may keep 0 pairs in a round"})
    result_ds_train_split: str = field(default="train_sft", metadata={"help": "train split name of the result"})
    result_ds_test_split: str = field(default="test_sft", metadata={"help": "test split name of the result"})
    result_ds_train_append: bool = field(default=False, metadata={"help": "append to the result's train split"})
    result_ds_test_append: bool = field(default=False, metadata={"help": "append to the result's test split"})
    output_root: str = field(default="outputs", metadata={"help": "local copy root when pushing"})
    data_format: str = data_format_field()
    column_map: Optional[dict] = column_map_field()
    drop_invalid_rows: bool = drop_invalid_rows_field()
    overwrite_input: bool = field(default=False, metadata={
        "help": "allow result_ds_id to be first_ds_id or second_ds_id (that input is then replaced); "
                "otherwise that is refused with exit 2"})


def validate(args: MergeArgs) -> None:
    """Cheap checks first: the user learns about a typo before any dataset is read."""
    for key in ("first_ds_id", "second_ds_id", "result_ds_id"):
        if not getattr(args, key):
            raise UsageError(f"{key} is required")
    for ds in ("first", "second", "result"):  # one split as both: the test rows would replace (or be) the train rows
        train, test = getattr(args, f"{ds}_ds_train_split"), getattr(args, f"{ds}_ds_test_split")
        if test and train == test:
            raise UsageError(f"{ds}_ds_train_split and {ds}_ds_test_split are both '{train}'; give the test split "
                             f"another name" + (" (or '' for none)" if ds == "first" else ""))
    check_format_args(args.data_format, args.column_map)
    check_push_possible(args.push_result_ds_to_hf_hub, f"result dataset '{args.result_ds_id}'")


def align(ds: Dataset, source: str) -> list[dict[str, Any]]:
    """Rows with SYNTH_COLUMNS first, then the dataset's other columns (`test`, `entry_point`...,
    kept as they are); fills are marked and counted, never silent."""
    fills: Counter[str] = Counter()
    rows = [_align_row(row, fills) for row in canonical_synth_columns(ds)]
    for column, count in fills.items():
        logger.info("%s: filled column '%s' in %d row(s)", source, column, count)
    return rows


def _align_row(row: dict[str, Any], fills: Counter) -> dict[str, Any]:
    messages = [{"role": str(m.get("role")), "content": str(m.get("content") or "")} for m in row["messages"]]
    prompt = row.get("prompt")
    if not prompt:
        prompt = first_user_message(messages)
        fills["prompt (from the first user message)"] += 1
    out = {"prompt": prompt, "messages": messages}
    out["prompt_id"] = row.get("prompt_id") or prompt_id_for(prompt)
    if not row.get("prompt_id"):
        fills["prompt_id (hash of the prompt)"] += 1
    for column in ("generator", "seed_prompt", "category"):
        value = row.get(column)
        if value is None or value == "":
            fills[f"{column} (as null)"] += 1
            out[column] = MISSING
        else:
            out[column] = str(value)
    extras = {k: v for k, v in row.items() if k not in SYNTH_COLUMNS}
    return {**{c: out[c] for c in SYNTH_COLUMNS}, **extras}


def rows_to_dataset(rows: list[dict[str, Any]]) -> Dataset:
    """One table from rows whose extra columns differ by source (None where a source lacks one)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    ds = Dataset.from_list([{c: row.get(c) for c in columns} for row in rows])
    for column in ("generator", "seed_prompt", "category"):  # all-null: still a string column
        if column in ds.column_names and ds.features[column] == Value("null"):
            ds = ds.cast_column(column, Value("string"))
    return ds


def _messages_key(row: dict[str, Any]) -> str:
    return json.dumps([(m["role"], normalize_text(m["content"])) for m in row["messages"]])


def dedup(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Drop rows whose normalised messages were already seen; keep the first occurrence."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        key = _messages_key(row)
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept, len(rows) - len(kept)


def count_added(train: list[dict[str, Any]], first_rows: list[dict[str, Any]]) -> int:
    """Result train rows that the first dataset did not already hold: what the merge really
    added. WHY: the loop stops on this, not on data_gen's `kept`, since kept pairs may all be
    duplicates of earlier rounds' data."""
    known = {_messages_key(r) for r in first_rows}
    return sum(1 for r in train if _messages_key(r) not in known)


def drop_exact_test_prompts(train: list[dict[str, Any]],
                            test: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Drop train rows whose normalised prompt equals a test prompt (exact match only: the
    near-duplicate check against test prompts is data_gen's, in llamaduo.quality)."""
    test_prompts = {normalize_text(r["prompt"]) for r in test}
    kept = [r for r in train if normalize_text(r["prompt"]) not in test_prompts]
    return kept, len(train) - len(kept)


def _load(ref: str, split: str, what: str, args: MergeArgs) -> Dataset:
    where = f"{what} '{ref}' split '{split}'"
    ds = to_messages(load_split(ref, split, what=what), where,
                     args.data_format, args.column_map, require_answer="test" not in split)
    return check_sft_columns(ds, where, drop_invalid=args.drop_invalid_rows)


def _load_second(args: MergeArgs) -> Dataset:
    """The second train split, or an empty one when it may be absent (`second_ds_optional`)."""
    try:
        return _load(args.second_ds_id, args.second_ds_train_split, "second dataset", args)
    except UsageError as err:
        if not args.second_ds_optional or any(s in str(err) for s in ("missing column", "data format", "no answers")):
            raise
        logger.warning("second dataset has no usable train rows (%s); merging the first dataset alone", err)
        return Dataset.from_dict({"messages": []})


def output_plan(args: MergeArgs) -> OutputPlan:
    """The folder this run writes (locked for the run) and the inputs it must not replace."""
    return dataset_output_plan(args.result_ds_id, "result_ds_id", push=args.push_result_ds_to_hf_hub,
                               output_root=args.output_root, overwrite_input=args.overwrite_input,
                               inputs={"first_ds_id": args.first_ds_id, "second_ds_id": args.second_ds_id})


def main(argv: Sequence[str] | None = None) -> int:
    """`dataset_merge.py` / `llamaduo-merge`: parse the config, then merge."""
    setup_logging()
    return merge(*parse_args(argv))


def parse_args(argv: Sequence[str] | None = None) -> tuple[MergeArgs]:
    """(MergeArgs,) from the CLI and an optional `--from-config` YAML (also the loop's check)."""
    return parse_config(MergeArgs, argv=argv, description=DESCRIPTION, epilog=EXIT_CODES_HELP)


@guarded_output(output_plan, precheck=validate)
def merge(args: MergeArgs) -> int:
    """Merge the two datasets, drop exact duplicates and exact test prompts; write the result."""
    validate(args)
    first_train = _load(args.first_ds_id, args.first_ds_train_split, "first dataset", args)
    second_train = _load_second(args)
    test_sources = [(args.first_ds_id, args.first_ds_test_split, "first dataset")] if args.first_ds_test_split else []
    if args.second_ds_test_split:
        test_sources.append((args.second_ds_id, args.second_ds_test_split, "second dataset"))
    tests = [_load(ref, split, what, args) for ref, split, what in test_sources]

    first_rows, second_rows = align(first_train, "first dataset"), align(second_train, "second dataset")
    train, dup_count = dedup(first_rows + second_rows)
    test_rows, test_dups = dedup([row for ds, (_, _, what) in zip(tests, test_sources) for row in align(ds, what)])
    train, contaminated = drop_exact_test_prompts(train, test_rows)
    if not train:
        raise UsageError("the merged train split is empty after dropping duplicates and test prompts")

    splits = {args.result_ds_train_split: rows_to_dataset(train)}
    if test_rows:
        splits[args.result_ds_test_split] = rows_to_dataset(test_rows)
    counts = {"first_train": len(first_rows), "second_train": len(second_rows), "exact_duplicates_dropped": dup_count,
              "contaminated_dropped": contaminated, "test_duplicates_dropped": test_dups,
              "train": len(train), "test": len(test_rows), "added": count_added(train, first_rows)}
    out = save_output(
        splits, args.result_ds_id, push=args.push_result_ds_to_hf_hub, output_root=args.output_root,
        append={args.result_ds_train_split: args.result_ds_train_append,
                args.result_ds_test_split: args.result_ds_test_append},
        stage="dataset_merge", config=config_to_dict(args),
        inputs={"first": {"id": args.first_ds_id}, "second": {"id": args.second_ds_id}, "counts": counts},
        extra_files=lambda folder: (folder / "summary.json").write_text(
            json.dumps({**counts, "peak_rss_mb": peak_rss_mb()}, indent=2) + "\n"),
    )
    print(f"merged {counts['first_train']} + {counts['second_train']} train rows ({counts['added']} new); dropped "
          f"{dup_count} exact duplicate(s) and {contaminated} test-contaminated row(s); "
          f"wrote train {len(train)}, test {len(test_rows)} -> {out}")
    return EXIT_OK

