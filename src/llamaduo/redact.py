"""One masking function for every text that leaves the process: logs, dataset cards,
summaries, reports, error lines and `--print-config`.

Why one function: a base URL like `http://user:secret@host/v1?api_key=...` reaches the log
(the client describes itself), the card (the effective config) and summary.json (inputs);
masking it in each writer separately is how one of them gets forgotten. Light on purpose
(stdlib only), because the logging filter and the error printer import it.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Callable, Iterable

MASK = "***"

#: env vars whose values are credentials, besides those registered by other modules (the
#: service-LLM provider registry registers every provider's key_env / secret_env); their values are
#: replaced wherever they appear
SECRET_ENV_VARS = ("SERVICE_LLM_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

# Callables that list more credential variables, asked at each masking. Registration (instead of
# importing the provider registry here) keeps this module, and errors.py that uses it, at the bottom
# of the import graph: whoever knows secret names tells the masker, the masker imports nobody.
_secret_sources: list[Callable[[], Iterable[str]]] = []


def register_secret_env_vars(source: Callable[[], Iterable[str]]) -> None:
    """Add a callable listing credential variable names (asked lazily, so a provider registered
    later is still covered). Registering the same callable twice is a no-op."""
    if source not in _secret_sources:
        _secret_sources.append(source)


def secret_env_vars() -> tuple[str, ...]:
    """SECRET_ENV_VARS plus every registered source's names (the providers' credential variables)."""
    names = dict.fromkeys(SECRET_ENV_VARS)
    for source in list(_secret_sources):
        try:
            names.update(dict.fromkeys(source()))
        except ImportError:  # a source's modules are still being imported (a log line during that import)
            continue
    return tuple(names)

# scheme://userinfo@ : the userinfo (user, or user:password) is a credential either way
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s'\"<>]+)@")
# ?key=... / &access_token=... / ;sig=... : a query parameter named like a credential
_SECRET_PARAM = re.compile(
    r"(?P<lead>[?&;](?:[\w.-]*[_.-])?(?:api[_-]?key|access[_-]?token|apikey|key|token|secret|signature|sig|"
    r"password|passwd|pwd|auth|credential|code)(?:[_.-][\w.-]*)?=)(?P<value>[^&#\s'\"<>]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with URL credentials, credential-named query values and the values of known
    credential env vars replaced by `***`."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _SECRET_PARAM.sub(lambda m: f"{m['lead']}{MASK}", text)
    for var in secret_env_vars():
        value = os.environ.get(var)
        if value and len(value) >= 6:
            text = text.replace(value, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A handler filter that masks every record's final message (arguments included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's problem, not ours
            return True
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
