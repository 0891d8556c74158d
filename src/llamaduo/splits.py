"""A seeded train/test split, stratified by category: how collect.py makes `test_sft`.

Why not `datasets.Dataset.train_test_split(stratify_by_column=...)`: it needs a ClassLabel
column and refuses a category with a single row, which real prompt logs have. Here a category's
share of the test split follows its share of the rows (largest remainders), every row lands in
exactly one split, and the same seed gives the same split.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Hashable, Sequence

from llamaduo.errors import UsageError


def rows_for_test(test_size: float, n_rows: int) -> int:
    """`test_size` as a row count (a whole number >= 1) or a fraction (0 < x < 1) of `n_rows`.

    A fraction rounds to the nearest count but keeps at least one test row and one train row
    when there are two or more rows."""
    if test_size <= 0 or math.isnan(test_size) or math.isinf(test_size):
        raise UsageError(f"test_size must be a row count >= 1 or a fraction in (0, 1), got {test_size}")
    if test_size >= 1:
        if test_size != int(test_size):
            raise UsageError(f"test_size {test_size} is neither a whole row count nor a fraction in (0, 1)")
        count = int(test_size)
        if count >= n_rows:
            raise UsageError(f"test_size {count} leaves no train rows: only {n_rows} distinct rows")
        return count
    if n_rows < 2:
        return 0
    return min(max(1, round(test_size * n_rows)), n_rows - 1)


def stratified_split(keys: Sequence[Hashable], n_test: int, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, test indices) of rows grouped by `keys` (e.g. their category).

    Each group gives `n_test * group_size / n_rows` test rows, rounded by largest remainder
    (ties broken by the seeded order), so the counts add up to `n_test` exactly. Indices come
    back sorted, so the splits keep the input order."""
    n = len(keys)
    if not 0 <= n_test <= n:
        raise ValueError(f"n_test={n_test} out of range for {n} rows")
    rng = random.Random(seed)
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    names = sorted(groups, key=str)
    rng.shuffle(names)  # the seeded tie order between equal remainders
    quotas = {g: n_test * len(groups[g]) / n if n else 0.0 for g in names}
    counts = {g: int(quotas[g]) for g in names}
    short = n_test - sum(counts.values())
    for g in sorted(names, key=lambda g: quotas[g] - counts[g], reverse=True)[:short]:
        counts[g] += 1
    test: list[int] = []
    for g in names:
        members = list(groups[g])
        rng.shuffle(members)
        test += members[:counts[g]]
    chosen = set(test)
    return [i for i in range(n) if i not in chosen], sorted(test)
