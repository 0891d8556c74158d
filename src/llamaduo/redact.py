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


# a URL with a scheme, up to the first blank or quote
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
#: query parameters known to carry no credential: their values stay readable in logs and cards.
#: Every other parameter's value is masked (an allowlist, because credential names cannot all be
#: guessed: `?code=`, `?X-Goog-Signature=`, `?sv=...&sig=` of an Azure SAS, `?hmac=`...).
HARMLESS_PARAMS = frozenset({
    "api-version", "api_version", "apiversion", "model", "models", "deployment", "deployment-id",
    "deployment_id", "version", "revision", "region", "location", "alt", "format", "stream", "limit",
    "lang", "locale", "beta", "timeout", "project", "organization", "org",
})


def _mask_query(query: str) -> str:
    """Each `name=value` (separated by & or ;) keeps its value only when `name` is harmless."""
    parts = re.split(r"([&;])", query)
    for i in range(0, len(parts), 2):
        name, eq, value = parts[i].partition("=")
        if not parts[i] or (eq and (not value or name.lower() in HARMLESS_PARAMS)):
            continue
        parts[i] = f"{name}={MASK}" if eq else MASK  # a bare `?token` is masked whole
    return "".join(parts)


def _masked_url_parts(url: str) -> list[str]:
    """The values `_mask_url` hides: non-harmless query values and the fragment."""
    rest, _, fragment = url.partition("#")
    query = rest.partition("?")[2]
    values = [v for name, eq, v in (p.partition("=") for p in re.split(r"[&;]", query) if p)
              if eq and v and name.lower() not in HARMLESS_PARAMS]
    return values + ([fragment] if fragment else [])


def _mask_url(url: str) -> str:
    """Userinfo, every query value not known to be harmless, and the whole fragment (where
    OAuth's implicit flow puts `#access_token=`) become `***`; scheme, host and path stay."""
    url = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", url)
    rest, hash_, fragment = url.partition("#")
    base, qmark, query = rest.partition("?")
    return base + (qmark + _mask_query(query) if qmark else "") + (hash_ + MASK if fragment else hash_)


# any env var named like a credential (OPENAI_API_KEY, GITHUB_TOKEN, AWS_SECRET_ACCESS_KEY, ...),
# besides the declared ones: a whole word of the name, so TOKENIZERS_PARALLELISM is not one
_SECRET_ENV_NAME = re.compile(r"(^|_)(API_?KEY|ACCESS_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(_|$)",
                              re.IGNORECASE)
_MIN_SECRET = 6  # shorter values ("1", "true") would mask ordinary words
_REGISTERED: dict[str, str] = {}  # value -> where it came from (a config key), never printed


def register_secret(value: object, source: str) -> None:
    """Remember a secret that is not in the environment (a config key such as
    `service_llm_api_key`): every later `redact` masks it, `find_secret` finds it."""
    if isinstance(value, str) and len(value) >= _MIN_SECRET:
        _REGISTERED[value] = source


def url_secrets(text: str) -> list[str]:
    """The credential parts of the URLs in `text` (userinfo, credential-named query values),
    so that a base URL's password is a known secret value wherever it reappears."""
    parts = [m["userinfo"] for m in _USERINFO.finditer(text or "")]
    parts += [m["value"] for m in _SECRET_PARAM.finditer(text or "")]
    parts += [p for m in _URL.finditer(text or "") for p in _masked_url_parts(m.group(0))]
    return [p for p in parts if len(p) >= _MIN_SECRET and p != MASK]


def known_secrets() -> dict[str, str]:
    """{secret value: its source's name}: registered config values, the declared credential
    env vars and every env var named like a credential."""
    found = dict(_REGISTERED)
    declared = set(secret_env_vars())
    for name, value in os.environ.items():
        if (name in declared or _SECRET_ENV_NAME.search(name)) and len(value) >= _MIN_SECRET:
            found.setdefault(value, f"env {name}")
        elif "://" in value:  # e.g. OPENAI_BASE_URL=https://user:pass@host/v1
            for part in url_secrets(value):
                found.setdefault(part, f"credentials in the URL of env {name}")
    return found


def mask_secrets(text: str) -> str:
    """`text` with every known secret value replaced by `***`; unlike `redact`, URLs that
    merely look like they carry credentials are left alone (for dataset cells: user data)."""
    if not text:
        return text
    for value in sorted(known_secrets(), key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


def find_secret(text: str) -> str | None:
    """The source's name (never the value) of a known secret that `text` still holds, or
    None. For the last check before a write or a push."""
    if not text:
        return None
    for value, source in known_secrets().items():
        if value in text:
            return source
    return None


def redact(text: str) -> str:
    """`text` with URL credentials (userinfo, fragment, query values not known to be harmless),
    credential-named query values outside URLs, and the values of known credential env vars and
    registered config secrets replaced by `***`."""
    if not text:
        return text
    text = _URL.sub(lambda m: _mask_url(m.group(0)), text)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _SECRET_PARAM.sub(lambda m: f"{m['lead']}{MASK}", text)
    for value in sorted(known_secrets(), key=len, reverse=True):  # longest first: no partial leftovers
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
