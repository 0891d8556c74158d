"""Partial results on disk, so an interrupted run resumes where it stopped.

Each process appends finished samples to its own JSON-lines file and flushes + fsyncs after
every batch. A kill can only lose the batch in flight; a torn last line (killed mid-write) is
cut off on the next start. The folder is named after a hash of everything that determines the
outputs (model sha, prompts, decoding settings, batch size), so results from a different model
or setting are never mixed in. Hand-written rather than a library because it is ~60 lines and
must work per rank without a coordinator.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

logger = logging.getLogger("llamaduo.inference")

PARTIAL_DIR = "partial"


def run_key(settings: Mapping[str, Any]) -> str:
    """A short stable hash of the settings that determine the outputs."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class PartialStore:
    """`<output dir>/partial/<run key>/rank<N>.jsonl`, one record per finished sample."""

    def __init__(self, out_dir: Path, key: str, rank: int, meta: Mapping[str, Any] | None = None):
        self.folder = Path(out_dir) / PARTIAL_DIR / key
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"rank{rank:03d}.jsonl"
        _drop_torn_tail(self.path)
        if meta is not None and rank == 0:
            (self.folder / "meta.json").write_text(json.dumps(meta, indent=2, default=str))

    def load(self) -> dict[tuple[int, int], dict[str, Any]]:
        """Every finished sample of every rank, keyed by (row_index, repeat_index)."""
        done: dict[tuple[int, int], dict[str, Any]] = {}
        for file in sorted(self.folder.glob("rank*.jsonl")):
            for rec in _read_records(file):
                done[(rec["row_index"], rec["repeat_index"])] = rec
        return done

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Write one batch's records and make them durable before the next batch starts."""
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())

    def remove(self) -> None:
        """Drop the partial results once the final output is saved."""
        shutil.rmtree(self.folder, ignore_errors=True)
        parent = self.folder.parent
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


def _read_records(file: Path) -> Iterable[dict[str, Any]]:
    with open(file, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.endswith("\n"):
                break  # torn tail of a killed writer; never trusted
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s:%d is not valid JSON; that sample will be regenerated", file, n)


def _drop_torn_tail(path: Path) -> None:
    """Truncate after the last newline so the next append starts on a clean line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    with open(path, "r+b") as fh:
        fh.truncate(cut)
    logger.warning("dropped a partially written record at the end of %s", path)
