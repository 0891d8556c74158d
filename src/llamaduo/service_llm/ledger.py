"""The response ledger: every completed call, persisted (SQLite, WAL) before its result is used,
so a rerun after a crash or kill -9 never pays for a finished call twice. Keyed by provider,
model, gen config, the whole conversation and the sample index (never the API key). Checked
and write-probed before the first call; a write that fails later raises `LedgerWriteError`
and the paid answers go to a sidecar (sidecar.py). Details: docs/service_llm.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from llamaduo.errors import UsageError
from llamaduo.service_llm.records import Completion
from llamaduo.service_llm import sidecar

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    sample_index INTEGER NOT NULL,
    messages TEXT NOT NULL,
    text TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    finish_reason TEXT NOT NULL,
    latency_s REAL NOT NULL,
    cost_usd REAL NOT NULL,
    created_at REAL NOT NULL
)
"""


def ledger_key(
    *,
    provider: str,
    model: str,
    gen_config: dict,
    messages: Sequence[dict],
    sample_index: int,
) -> str:
    """sha256 over a canonical JSON of what determines the reply."""
    payload = json.dumps(
        {
            "v": SCHEMA_VERSION,
            "provider": provider,
            "model": model,
            "gen_config": gen_config,
            "messages": list(messages),
            "sample_index": sample_index,
        },
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


COLUMNS = ("key", "provider", "model", "sample_index", "messages", "text", "input_tokens",
           "output_tokens", "finish_reason", "latency_s", "cost_usd", "created_at")


class LedgerWriteError(Exception):
    """A write to an open ledger failed (or the file is no longer the one that was opened)."""


def _refuse(path: Path, problem: str, fix: str) -> UsageError:
    return UsageError(f"ledger {path}: {problem}; {fix}")


def check_location(path: Path, create: bool = True) -> None:
    """The path problems a user can fix, named before SQLite turns them into a traceback.
    Write bits are checked as well as access(), so a file or folder marked read-only is
    refused even for root (who would otherwise write into it). Without `create` nothing is
    created: the nearest existing folder must be writable."""
    fix = "set ledger_path to a writable file, or fix the permissions"
    if path.is_dir():
        raise _refuse(path, "is a folder, not a file", "set ledger_path to a file path such as <folder>/ledger.sqlite")
    for parent in (path.parent, *path.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise _refuse(path, f"{parent} is a file, so the ledger cannot be created under it",
                              "choose another output folder or ledger_path")
            if not _writable(parent):
                raise _refuse(path, f"the folder {parent} is not writable", fix)
            break
    if path.exists() and not _writable(path):
        raise _refuse(path, "the file is read-only", "make it writable (chmod u+w) or set another ledger_path")
    if not create:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _refuse(path, f"its folder cannot be created ({err.strerror})", fix) from None
    if not _writable(path.parent):
        raise _refuse(path, f"its folder {path.parent} is not writable", fix)
    if path.exists() and not _writable(path):
        raise _refuse(path, "the file is read-only", "make it writable (chmod u+w) or set another ledger_path")


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


class Ledger:
    """A small SQLite key -> Completion store (see module docstring)."""

    def __init__(self, path: str | Path, *, probe: bool = True) -> None:
        """Open (creating it if needed), check the schema and, with `probe`, prove that a
        write commits. Any problem is a UsageError naming the path and the fix."""
        self.path = Path(path)
        check_location(self.path)
        try:
            # isolation_level=None: autocommit, so each put() is durable on return.
            self._conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash (kill -9); only an OS crash could lose
            # the last transactions, which a rerun would then simply redo.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)
            self._check_schema()
            if probe:
                self._conn.execute("CREATE TABLE IF NOT EXISTS probe (at REAL)")
                self._conn.execute("DELETE FROM probe")
                self._conn.execute("INSERT INTO probe VALUES (?)", (time.time(),))
        except sqlite3.DatabaseError as err:
            self.close()
            raise _refuse(self.path, f"not a usable SQLite ledger ({err})",
                          "move the file away (a new ledger is then created) or set another ledger_path") from None
        self._inode = self.path.stat().st_ino
        self._written: dict[str, dict[str, Any]] = {}  # this session's rows, for a sidecar
        imported = sidecar.import_into(self.path, self.put_row)
        if imported:
            import logging

            logging.getLogger("llamaduo.service_llm").warning(
                "imported %d paid answer(s) that an earlier run could not write into %s", imported, self.path)

    def _check_schema(self) -> None:
        cols = tuple(r[1] for r in self._conn.execute("PRAGMA table_info(completions)"))
        if cols != COLUMNS:
            raise _refuse(self.path, f"its completions table has columns {list(cols)}, not a ledger's",
                          "move the file away or set another ledger_path")

    def get(self, key: str) -> Optional[Completion]:
        row = self._conn.execute(
            "SELECT text, input_tokens, output_tokens, model, finish_reason, latency_s, cost_usd "
            "FROM completions WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        text, inp, out, model, finish, latency, cost = row
        return Completion(text, inp, out, model, finish, latency, cost, cached=True)

    def put(self, key: str, completion: Completion, *, provider: str, sample_index: int,
            messages: Sequence[dict]) -> None:
        """Store one paid answer; LedgerWriteError if it did not reach this ledger file."""
        row = {
            "key": key, "provider": provider, "model": completion.model, "sample_index": sample_index,
            "messages": json.dumps(list(messages), ensure_ascii=False), "text": completion.text,
            "input_tokens": completion.input_tokens, "output_tokens": completion.output_tokens,
            "finish_reason": completion.finish_reason, "latency_s": completion.latency_s,
            "cost_usd": completion.cost_usd, "created_at": time.time(),
        }
        self._written[key] = row
        self.put_row(row)

    def put_row(self, row: dict[str, Any]) -> None:
        """Insert a row given by column name (sidecar import uses this too)."""
        try:
            # SQLite keeps writing into a file that was deleted or replaced after it was
            # opened, so those answers would be lost without an error: check it is still ours.
            if self.path.stat().st_ino != self._inode:
                raise LedgerWriteError(f"{self.path} was replaced after it was opened")
            self._conn.execute(f"INSERT OR REPLACE INTO completions VALUES ({','.join('?' * len(COLUMNS))})",
                               tuple(row[c] for c in COLUMNS))
        except FileNotFoundError:
            raise LedgerWriteError(f"{self.path} (or its folder) was deleted during the run") from None
        except (sqlite3.Error, OSError) as err:
            raise LedgerWriteError(f"{self.path}: {err}") from None

    def paid_rows(self) -> list[dict[str, Any]]:
        """Every row this ledger can still give back (all rows if the open file is readable,
        else this session's writes): what a sidecar must keep when writing fails."""
        rows = dict(self._written)
        try:
            cur = self._conn.execute(f"SELECT {','.join(COLUMNS)} FROM completions")
            for values in cur.fetchall():
                rows.setdefault(values[0], dict(zip(COLUMNS, values)))
        except sqlite3.Error:
            pass
        return list(rows.values())

    def count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def totals(self) -> dict[str, Any]:
        """Tokens and cost of everything stored (for reports)."""
        calls, inp, out, cost = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(input_tokens),0), COALESCE(SUM(output_tokens),0), "
            "COALESCE(SUM(cost_usd),0) FROM completions"
        ).fetchone()
        return {"calls": calls, "input_tokens": inp, "output_tokens": out, "cost_usd": cost}

    def close(self) -> None:
        try:
            if getattr(self, "_conn", None) is not None:
                self._conn.close()
        except sqlite3.Error:
            pass
