"""Which samples to generate, in which batches, on which process.

Batches are formed once from the *whole* work list (length-sorted, then cut into fixed-size
chunks), and batch `b` goes to rank `b % world_size`. So the batch a sample lands in does not
depend on the number of processes or on how far an interrupted run had got: a resumed run, a
single-process run and a multi-process run compute identical batches, hence identical outputs.
"""
from __future__ import annotations

from typing import Sequence

from llamaduo.inference.prompts import PromptRecord, WorkItem
from llamaduo.inference.generation import sample_seed


def build_work_items(records: Sequence[PromptRecord], token_ids: Sequence[Sequence[int]],
                     repeat: int, seed: int) -> list[WorkItem]:
    """One WorkItem per (prompt, repeat), each with its own seed."""
    return [
        WorkItem(r.row_index, r.prompt_id, k, tuple(ids), sample_seed(seed, r.prompt_id, k))
        for r, ids in zip(records, token_ids)
        for k in range(repeat)
    ]


def plan_batches(items: Sequence[WorkItem], batch_size: int) -> list[list[WorkItem]]:
    """Longest prompts first (an OOM shows up in the first batch, not after an hour), with
    similar lengths together so left padding wastes little; ties keep dataset order."""
    ordered = sorted(items, key=lambda it: (-len(it.input_ids), it.row_index, it.repeat_index))
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


def batches_for_rank(batches: Sequence[list[WorkItem]], rank: int, world_size: int) -> list[list[WorkItem]]:
    """Round-robin over the length-sorted batches, which also balances the work per rank."""
    return [b for i, b in enumerate(batches) if i % world_size == rank]


def padding_waste(batches: Sequence[Sequence[WorkItem]]) -> float:
    """Fraction of prompt positions that are padding (reported, and checked in tests)."""
    total = real = 0
    for b in batches:
        width = max(len(it.input_ids) for it in b)
        total += width * len(b)
        real += sum(len(it.input_ids) for it in b)
    return 1 - real / total if total else 0.0
