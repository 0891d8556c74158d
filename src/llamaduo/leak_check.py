"""No known secret leaves in an output: masked in every text cell, then checked once more just
before a folder is published or a commit is pushed.

Why a separate last check: masking happens where text is produced (exec_reason, logs, cards),
and a writer that forgets it would publish an API key to the Hub. This module looks at what is
actually about to be written (the dataset cells, the staged files' bytes, the card) for every
known secret value (llamaduo.redact.known_secrets: config keys, credential env vars, URL
credentials) and refuses with exit 1, naming the column or file and the secret's source, never
its value.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from llamaduo.errors import RunFailed
from llamaduo.redact import known_secrets, mask_secrets, redact

if TYPE_CHECKING:  # datasets is imported by the callers that pass one; outputs.py stays light
    from datasets import Dataset

logger = logging.getLogger("llamaduo.leak_check")

TEXT_SUFFIXES = (".json", ".jsonl", ".md", ".txt", ".yaml", ".yml", ".csv")
MAX_SCANNED_BYTES = 256 * 2**20  # larger files (model weights) are not read


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, list):
        return [_mask_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _mask_value(v) for k, v in value.items()}
    return value


def _holds(value: Any, secrets: dict[str, str]) -> Optional[str]:
    """The source of the first secret found in a (nested) cell, or None."""
    if isinstance(value, str):
        return next((src for s, src in secrets.items() if s in value), None)
    if isinstance(value, list):
        return next((src for v in value if (src := _holds(v, secrets))), None)
    if isinstance(value, dict):
        return next((src for v in value.values() if (src := _holds(v, secrets))), None)
    if isinstance(value, bytes):
        return next((src for s, src in secrets.items() if s.encode() in value), None)
    return None


def _leaky_columns(ds: Dataset, secrets: dict[str, str]) -> dict[str, str]:
    """{column: secret source} for the columns holding a known secret somewhere."""
    found = {}
    for col in ds.column_names:
        src = next((s for v in ds[col] if (s := _holds(v, secrets))), None)
        if src:
            found[col] = src
    return found


def mask_dataset(ds: Dataset, what: str) -> Dataset:
    """`ds` with every known secret value masked in every text cell (nested ones too); columns
    without one are left as they are (no copy when nothing is found)."""
    secrets = known_secrets()
    if not secrets or not len(ds):
        return ds
    leaky = _leaky_columns(ds, secrets)
    if not leaky:
        return ds
    logger.warning("masked a known secret in column(s) %s of %s (%s)", ", ".join(sorted(leaky)), what,
                   ", ".join(sorted(set(leaky.values()))))
    return ds.map(lambda batch: {c: [_mask_value(v) for v in batch[c]] for c in leaky}, batched=True,
                  features=ds.features, load_from_cache_file=False, desc=None)


def check_dataset(ds: Dataset, what: str) -> None:
    """Refuse (exit 1) to write or push a dataset that still holds a known secret."""
    secrets = known_secrets()
    if secrets and len(ds):
        leaky = _leaky_columns(ds, secrets)
        if leaky:
            col = sorted(leaky)[0]
            raise RunFailed(f"refusing to write {what}: column '{col}' holds a known secret "
                            f"({leaky[col]}); nothing was written")


def check_text(text: str, what: str) -> None:
    """Refuse (exit 1) to write or push a text (a card) that holds a known secret."""
    src = _holds(text, known_secrets())
    if src:
        raise RunFailed(f"refusing to write {what}: it holds a known secret ({src}); nothing was written")


def _forms(secret: str) -> list[bytes]:
    """How a secret's bytes look in the files: raw (arrow, text) and JSON-escaped (jsonl)."""
    escaped = json.dumps(secret)[1:-1]
    return list({secret.encode(), escaped.encode(), escaped.replace("/", "\\/").encode()})


def secure_folder(folder: Path, what: str) -> None:
    """Before a staged folder is published: mask known secrets in its text files (reports,
    summaries written by the stage), then refuse (exit 1) if any file's bytes, binary ones
    included, still hold one, naming the file."""
    _scan(Path(folder), what, mask=True)


def check_folder(folder: Path, what: str) -> None:
    """Before a model folder is uploaded: refuse (exit 1) if a file that would be uploaded
    (not checkpoint-*/, not README.md, which the card replaces) holds a known secret; the
    folder itself is not changed."""
    _scan(Path(folder), what, mask=False)


def _uploaded(rel: Path) -> bool:
    return rel.name != "README.md" and not any(part.startswith("checkpoint-") for part in rel.parts)


def _scan(folder: Path, what: str, mask: bool) -> None:
    secrets = known_secrets()
    if not secrets:
        return
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(folder)
        if (not mask and not _uploaded(rel)) or path.stat().st_size > MAX_SCANNED_BYTES:
            continue
        data = path.read_bytes()
        if mask and path.suffix in TEXT_SUFFIXES and any(f in data for s in secrets for f in _forms(s)):
            path.write_text(redact(data.decode("utf-8", "replace")), encoding="utf-8")
            logger.warning("masked a known secret in %s of %s", rel, what)
            data = path.read_bytes()
        found = next((src for secret, src in secrets.items() if any(f in data for f in _forms(secret))), None)
        if found is None and path.suffix == ".parquet":  # compressed: look at the values
            found = _holds(_parquet_rows(path), secrets)
        if found:
            raise RunFailed(f"refusing to write {what}: {rel} holds a known secret ({found}); "
                            f"nothing was written")


def _parquet_rows(path: Path) -> list:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
