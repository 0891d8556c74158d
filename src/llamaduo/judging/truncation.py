"""How many judged answers were cut off at `max_new_tokens`.

WHY it is reported next to the scores: a cut answer is usually unfinished code, so its score
judges the token limit, not the model. batch_inference.py writes a `finish_reason` column
("stop" or "length"); older outputs lack it, and then the share is reported as unknown, never 0.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

FINISH_COLUMN = "finish_reason"
CUT = "length"  # the finish_reason of an answer that hit max_new_tokens


def is_cut(row: Mapping[str, Any]) -> bool | None:
    """True if the row's answer hit max_new_tokens, False if it ended its turn, None if unknown."""
    reason = row.get(FINISH_COLUMN)
    return None if not reason else reason == CUT


def truncated_summary(finish_reasons: Sequence[str | None] | None) -> dict[str, Any]:
    """summary.json's `truncated`: {rows (cut), share (of all rows), total, unknown_rows}.

    `finish_reasons` is None when the input has no finish_reason column: rows and share are
    then None ("unknown"). Rows without a value (appended from an older run) are counted in
    `unknown_rows` and kept in the denominator, so the share is a lower bound, not inflated.
    """
    if finish_reasons is None:
        return {"rows": None, "share": None, "total": None, "unknown_rows": None}
    total = len(finish_reasons)
    cut = sum(1 for r in finish_reasons if r == CUT)
    return {"rows": cut, "share": cut / total if total else 0.0, "total": total,
            "unknown_rows": sum(1 for r in finish_reasons if not r)}


def truncation_line(summary: Mapping[str, Any]) -> str:
    """One line for the terminal summary and report.md; a warning when any answer was cut."""
    t = summary.get("truncated") or {}
    if t.get("rows") is None:
        return ("answers cut at max_new_tokens: unknown (the input has no finish_reason column; "
                "batch_inference.py writes it)")
    known = "" if not t.get("unknown_rows") else f"; {t['unknown_rows']} rows unknown"
    if t["rows"]:
        return (f"WARNING: {t['rows']} of {t['total']} answers ({100 * t['share']:.1f}%) were cut at "
                f"max_new_tokens{known}; their scores judge unfinished answers: raise max_new_tokens "
                f"in batch_inference")
    return f"answers cut at max_new_tokens: 0 of {t['total']}{known}"
