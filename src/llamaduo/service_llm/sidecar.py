"""Paid answers that could not be written into the ledger, kept in a JSON-lines file.

When the ledger stops accepting writes mid-run, the answers already paid for must not be lost
(a rerun would pay again). They go next to the ledger (`<ledger>.unsaved.jsonl`), or, when that
folder is gone or read-only, to a file in the temp folder named after the ledger's absolute
path. The next `Ledger` opened on the same path imports both and deletes them.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

SUFFIX = ".unsaved.jsonl"


def candidates(ledger_path: Path) -> list[Path]:
    """Where a sidecar for this ledger may be: beside it, then the temp-folder fallback."""
    absolute = Path(ledger_path).absolute()
    digest = hashlib.sha256(str(absolute).encode("utf-8")).hexdigest()[:16]
    return [absolute.with_name(absolute.name + SUFFIX),
            Path(tempfile.gettempdir()) / f"llamaduo-ledger-{digest}{SUFFIX}"]


def save(ledger_path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Append the rows to the first sidecar location that accepts them; return it."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    errors = []
    for path in candidates(ledger_path):
        try:
            with path.open("a", encoding="utf-8") as f:
                f.write(text)
                f.flush()
            return path
        except OSError as err:
            errors.append(f"{path}: {err.strerror}")
    raise OSError("no sidecar location is writable (" + "; ".join(errors) + ")")


def import_into(ledger_path: Path, put_row: Callable[[dict[str, Any]], None]) -> int:
    """Hand every sidecar row for the ledger at `ledger_path` to `put_row` (the ledger's insert;
    passed in so this module stays below ledger.py), skipping a torn last line, then delete the
    sidecar files. Returns the number of rows imported."""
    count = 0
    for path in candidates(ledger_path):
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # killed mid-write
            put_row(row)
            count += 1
        path.unlink()
    return count
