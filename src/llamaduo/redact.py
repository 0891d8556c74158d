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

MASK = "***"

#: env vars whose values are credentials, besides those the service-LLM providers declare
#: (their key_env / secret_env: `secret_env_vars()`); their values are replaced wherever they appear
SECRET_ENV_VARS = ("SERVICE_LLM_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def secret_env_vars() -> tuple[str, ...]:
    """SECRET_ENV_VARS plus every provider's credential variables (providers/ registry)."""
    try:
        from llamaduo.service_llm.providers import secret_env_vars as providers_secrets
    except ImportError:  # the registry is still being imported (a log line during its import)
        return SECRET_ENV_VARS
    return SECRET_ENV_VARS + providers_secrets()

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
