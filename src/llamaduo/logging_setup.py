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
    quiet_noisy_loggers()
    warnings.filterwarnings("ignore", category=FutureWarning)
    for handler in logging.getLogger().handlers:  # URL credentials and keys never reach a log
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    # bitsandbytes warns on every import, on CPU machines, that its optional `kernels` package is
    # missing. It is irrelevant here (4-bit QLoRA runs only on CUDA, where bitsandbytes has its own
    # kernels), and it was printed by every stage of every round. Only that message is dropped.
    logging.getLogger("bitsandbytes").addFilter(_drop_kernels_notice)
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_kernels_notice)


#: libraries that log every HTTP request or file lock at INFO
NOISY_LOGGERS = ("httpx", "httpx2", "httpcore", "urllib3", "filelock", "fsspec", "datasets", "huggingface_hub")


def quiet_noisy_loggers() -> None:
    """Set the chatty libraries, and every service-LLM provider's SDK loggers (each provider
    class names its own), to WARNING: one INFO line per request would bury the summary."""
    from llamaduo.service_llm.providers import noisy_loggers

    for name in (*NOISY_LOGGERS, *noisy_loggers()):
        logging.getLogger(name).setLevel(logging.WARNING)


def _drop_kernels_notice(record: logging.LogRecord) -> bool:
    return "kernels-community" not in record.getMessage()
