"""One logging format for every script, so a chained shell run reads as one log."""
from __future__ import annotations

import logging
import os
import warnings

from llamaduo.redact import RedactingFilter


def setup_logging(level: str | int | None = None) -> None:
    """INFO by default (`LLAMADUO_LOG_LEVEL` overrides); quiet the noisy libraries."""
    level = level or os.environ.get("LLAMADUO_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpx2", "httpcore", "urllib3", "filelock", "fsspec", "datasets", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for handler in logging.getLogger().handlers:  # URL credentials and keys never reach a log
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    # bitsandbytes warns on every import, on CPU machines, that its optional `kernels` package is
    # missing. It is irrelevant here (4-bit QLoRA runs only on CUDA, where bitsandbytes has its own
    # kernels), and it was printed by every stage of every round. Only that message is dropped.
    logging.getLogger("bitsandbytes").addFilter(_drop_kernels_notice)
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_kernels_notice)


def _drop_kernels_notice(record: logging.LogRecord) -> bool:
    return "kernels-community" not in record.getMessage()
