"""Carry the test split's other columns (`test`, `entry_point`, `category`, ...) into the
batch-inference output, next to each answer.

WHY: later stages need per-row data that only the test split has; evaluation runs each answer
against its row's `test`. Columns the output already defines (and `messages`/`prompt`, which
`instructions`/`target_responses` already hold) are not copied. Feature types are kept as
they are in the test split, so a carried column round-trips through save/load unchanged.
"""
from __future__ import annotations

from datasets import Dataset, concatenate_datasets

NOT_CARRIED = ("messages", "prompt")


def carried_columns(test_ds: Dataset, output_columns: tuple[str, ...]) -> list[str]:
    """The test split's columns that go into the output, in the test split's order."""
    return [c for c in test_ds.column_names if c not in NOT_CARRIED and c not in output_columns]


def carry_columns(out: Dataset, test_ds: Dataset, row_indices: list[int]) -> Dataset:
    """`out` plus the carried columns; output row j came from test row row_indices[j]."""
    cols = carried_columns(test_ds, tuple(out.column_names))
    if not cols:
        return out
    extra = test_ds.select_columns(cols).select(row_indices)
    return concatenate_datasets([out, extra], axis=1)
