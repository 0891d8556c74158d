"""What finetune.py does with conversations longer than `max_length` (the `truncation` key:
`drop` (default), `error` or `keep`).

WHY: TRL cuts such a conversation silently, dropping the end of the last reply with its
end-of-turn label, so the model learns not to stop. Lengths are those of the tokenized rows the
trainer gets, so a row counts as cut exactly when training would cut it. Details and the
measured case: docs/finetune.md (Long conversations).
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

from llamaduo.errors import UsageError

logger = logging.getLogger("llamaduo.finetune")

POLICIES = ("drop", "error", "keep")
_ROUND_TO = 64  # suggested max_length: the longest conversation, rounded up to a multiple of this


@dataclass(frozen=True)
class TruncationCount:
    """finetune_summary.json's `truncation` (per dataset): what max_length would cut."""

    policy: str
    max_length: int | None
    rows: int
    cut: int
    share: float
    longest: int
    dropped: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def token_lengths(dataset: Any) -> list[int]:
    """Token count of every tokenized row, read from Arrow without building Python lists of ids."""
    import pyarrow.compute as pc

    return pc.list_value_length(dataset.with_format("arrow")[:]["input_ids"]).to_pylist()


def suggested_max_length(longest: int) -> int:
    return int(math.ceil(longest / _ROUND_TO) * _ROUND_TO)


def apply_truncation_policy(dataset: Any, max_length: int | None, policy: str, what: str, *,
                            truncate_here: bool = False, num_proc: int | None = None) -> tuple[Any, TruncationCount]:
    """Count the rows longer than `max_length` and drop them, refuse (UsageError), or keep them.

    Returns the dataset to train on and the count. Raises UsageError under `error` when any
    row is cut, and under `drop` when every row would be dropped. `truncate_here`: the trainer
    will not cut long rows itself (padding-free without packing), so `keep` cuts them here.
    """
    if policy not in POLICIES:
        raise UsageError(f"truncation must be one of {', '.join(POLICIES)}, got {policy!r}")
    lengths = token_lengths(dataset)
    longest = max(lengths, default=0)
    cut_rows = [i for i, n in enumerate(lengths) if max_length is not None and n > max_length]
    rows, cut = len(lengths), len(cut_rows)
    share = cut / rows if rows else 0.0
    head = (f"{what}: {cut} of {rows} conversations ({share:.1%}) are longer than max_length {max_length} "
            f"tokens (longest {longest})")
    dropped = 0
    if not cut:
        logger.info("%s: 0 of %d conversations are longer than max_length %s tokens (longest %d)",
                    what, rows, max_length, longest)
    elif policy == "error":
        raise UsageError(f"{head}; training would cut their assistant replies before the end-of-turn token. "
                         f"Set max_length to at least {suggested_max_length(longest)}, or truncation: drop "
                         f"(train without them) or keep (train on them cut)")
    elif policy == "drop":
        if cut == rows:
            raise UsageError(f"{head}: truncation: drop would leave nothing to train on; set max_length to at "
                             f"least {suggested_max_length(longest)}")
        dropped = cut
        keep = sorted(set(range(rows)) - set(cut_rows))
        dataset = dataset.select(keep)
        logger.warning("%s; dropped them (truncation: drop), so no reply trains without its end-of-turn token. "
                       "Raise max_length to %d to keep them", head, suggested_max_length(longest))
    else:
        logger.warning("%s; training on them cut (truncation: keep): those replies lose their end-of-turn label",
                       head)
        if truncate_here:
            from llamaduo.chat_template import truncate_tokenized

            dataset = truncate_tokenized(dataset, max_length, num_proc)
    return dataset, TruncationCount(policy, max_length, rows, cut, share, longest, dropped)
