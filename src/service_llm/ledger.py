"""The response ledger: every completed call, persisted before its result is used.

SQLite in WAL mode, one row per call, committed immediately: after a crash or kill -9
every finished call is on disk, so a rerun reuses it and never pays for it twice. The
key is a hash of what determines the answer: provider, model, generation config, the
full message history (which includes re-asks) and the sample index. The base URL is not
part of it, so a local server restarted on another port keeps its cache (use
--refresh-cache or another ledger if a different server serves the same model name). The
API key is deliberately not part of the key and is never stored.

Several processes may share one ledger file (WAL + busy timeout).
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from src.service_llm.records import Completion

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


class Ledger:
    """A small SQLite key -> Completion store (see module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit, so each put() is durable on return.
        self._conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (kill -9); only an OS crash could lose
        # the last transactions, which a rerun would then simply redo.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(_SCHEMA)

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
        self._conn.execute(
            "INSERT OR REPLACE INTO completions VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                key,
                provider,
                completion.model,
                sample_index,
                json.dumps(list(messages), ensure_ascii=False),
                completion.text,
                completion.input_tokens,
                completion.output_tokens,
                completion.finish_reason,
                completion.latency_s,
                completion.cost_usd,
                time.time(),
            ),
        )

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
            self._conn.close()
        except sqlite3.Error:
            pass
