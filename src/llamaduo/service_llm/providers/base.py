"""What a provider is: `ServiceProvider`, the class every provider module subclasses.

A provider class describes itself (name, default model, credential variables, generation keys,
structured-output fields, noisy loggers) and is the adapter: `complete()` turns a chat into one
call and the answer into a `RawCompletion`, mapping failures onto TransientError (retry),
PermanentError (this request never works) and FatalError (no request works). SDKs' own retries
stay off: every retry is paced and counted by scheduler.py. See docs/service_llm.md.
"""
from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional, Protocol, Sequence

from llamaduo.defaults import default_file
from llamaduo.errors import UsageError
from llamaduo.service_llm.records import (
    FatalError,
    PermanentError,
    RawCompletion,
    ResponseSchema,
    StructuredOutputRejected,
    TransientError,
    UnreachableError,
)

logger = logging.getLogger("llamaduo.service_llm")

#: one provider-neutral generation file for every hosted provider (gen_settings.py)
NEUTRAL_GEN_CONFIG = default_file("service_llm_gen.yaml")
#: the neutral concepts of a generation file (gen_settings.py) and their neutral names
NEUTRAL_GEN_NAMES: Mapping[str, Optional[str]] = {
    "max_tokens": "max_tokens", "stop": "stop", "seed": "seed", "temperature": "temperature", "top_p": "top_p"}


@dataclass(frozen=True)
class ProviderSpec:
    """Everything needed to build a client; validated. `api_key` never appears in repr."""

    provider: str
    model: str
    gen_config: dict
    base_url: Optional[str]
    timeout_s: float
    max_output_tokens: int
    api_key: Optional[str] = field(default=None, repr=False)
    gcp_project_id: Optional[str] = None
    gcp_location: Optional[str] = None
    aws_location: Optional[str] = None


@dataclass(frozen=True)
class Credentials:
    """The resolved credential settings (credentials.py) a provider's `check_credentials` reads."""

    api_key: Any  # credentials.Setting
    base_url: Optional[str]
    project: Any
    location: Any
    region: Any


class Provider(Protocol):
    async def complete(self, messages: Sequence[dict], sample_index: int,
                       schema: Optional[ResponseSchema] = None) -> RawCompletion: ...

    async def aclose(self) -> None: ...


class ServiceProvider:
    """Base class of every provider. A subclass that sets `name` is a provider; the registry
    (providers/__init__.py) finds it in this package or takes it from `register(cls)`."""

    # ---- what it is
    name: ClassVar[str]  # the `service_llm_provider` value
    default_model: ClassVar[str]
    family: ClassVar[str]  # the gen-file section it reads (`openai:`...); variants share one
    sdk: ClassVar[str] = ""  # for docs and help texts
    # ---- credentials (credentials.py reads these; redact.py masks key_env and secret_env)
    takes_api_key: ClassVar[bool] = True
    key_env: ClassVar[tuple[str, ...]] = ()  # the SDK's own API-key variables, in the SDK's order
    base_url_env: ClassVar[tuple[str, ...]] = ()
    #: where requests go without a base URL ({gcp}/{aws}: the region), probed by
    #: llamaduo/loop/check.py; empty: nothing to reach (a local model)
    default_url: ClassVar[str] = ""
    project_env: ClassVar[tuple[str, ...]] = ()  # set: needs a GCP project and location
    location_env: ClassVar[tuple[str, ...]] = ()
    region_env: ClassVar[tuple[str, ...]] = ()  # set: needs an AWS region
    secret_env: ClassVar[tuple[str, ...]] = ()  # other credential variables to mask
    # ---- generation settings
    default_gen_config: ClassVar[Optional[str]] = NEUTRAL_GEN_CONFIG
    gen_names: ClassVar[Mapping[str, Optional[str]]] = NEUTRAL_GEN_NAMES  # concept -> SDK name (None: none)
    own_gen_names: ClassVar[frozenset[str]] = frozenset()  # more SDK spellings kept as written
    stop_as_list: ClassVar[bool] = True  # a single stop string is sent as a one-item list
    gen_defaults: ClassVar[Mapping[str, Any]] = {}
    # ---- the rest
    free: ClassVar[bool] = False  # no pricing (a local model)
    noisy_loggers: ClassVar[tuple[str, ...]] = ()  # SDK loggers quieted to WARNING

    REQUIRED: ClassVar[tuple[str, ...]] = ("name", "default_model", "family")

    # ------------------------------------------------------------------ offline checks
    @classmethod
    def allowed_gen_keys(cls) -> Optional[set[str]]:
        """The SDK call's keyword arguments (None: checked in `validate_gen` instead)."""
        return None

    @classmethod
    def adjust_gen(cls, gen: dict, model: str, base_url: Optional[str], where: str) -> dict:
        """A last provider-specific rewrite of the mapped settings (e.g. a renamed parameter)."""
        return gen

    @classmethod
    def validate_gen(cls, gen: dict, where: str) -> dict:
        """Check (and complete) the generation settings; raise UsageError naming `where`."""
        return {**cls.gen_defaults, **gen}

    @classmethod
    def check_credentials(cls, creds: Credentials) -> None:
        """Raise UsageError when the call could not authenticate (no network call)."""
        if cls.takes_api_key and not creds.api_key.value:
            raise UsageError(f"provider {cls.name} needs an API key; looked at "
                             f"{', '.join(creds.api_key.looked_at)}: none is set")

    @classmethod
    def check_model(cls, model: str) -> None:
        """Raise UsageError when `model` cannot exist (offline checks only)."""

    @classmethod
    def max_output_tokens(cls, gen: Mapping[str, Any]) -> Optional[int]:
        """The reply's token cap from the settings, if they set one."""
        name = cls.gen_names.get("max_tokens")
        for key in (name, *MAX_TOKEN_KEYS):
            if key and key in gen:
                return gen[key]
        return None

    @staticmethod
    def structured_kwargs(schema: ResponseSchema) -> Optional[dict]:
        """The request fields that ask for native structured output (None: not supported,
        the reply is free text read by the stage's parser)."""
        return None

    # ------------------------------------------------------------------ the call
    def __init__(self, spec: ProviderSpec) -> None:
        self.spec = spec

    async def complete(self, messages: Sequence[dict], sample_index: int,
                       schema: Optional[ResponseSchema] = None) -> RawCompletion:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


MAX_TOKEN_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "max_new_tokens")


class StructuredFallback(ServiceProvider):
    """`complete` for HTTP providers: ask for native structured output when the job has a
    schema; if the server refuses those fields (an OpenAI-compatible server without
    `response_format`, a proxy without tools), warn once and send this and every later request
    of the run as plain text, which the stage's parser reads the same way. Subclasses write
    `_call`, which raises `StructuredOutputRejected` via `check_rejection`."""

    native_structured: bool = True

    async def _call(self, messages: Sequence[dict], sample_index: int,
                    schema: Optional[ResponseSchema]) -> RawCompletion:
        raise NotImplementedError

    def structured(self, schema: Optional[ResponseSchema]) -> dict:
        """The structured-output fields for this request ({} without a schema)."""
        return (self.structured_kwargs(schema) or {}) if schema is not None else {}

    async def complete(self, messages: Sequence[dict], sample_index: int,
                       schema: Optional[ResponseSchema] = None) -> RawCompletion:
        if schema is not None and self.native_structured and self.structured_kwargs(schema) is not None:
            try:
                return await self._call(messages, sample_index, schema)
            except StructuredOutputRejected as err:
                if self.native_structured:
                    self.native_structured = False
                    where = f" at {self.spec.base_url}" if self.spec.base_url else ""
                    logger.warning("%s%s does not take structured output (%s); continuing with plain-text "
                                   "replies", self.spec.provider, where, str(err)[:200])
        # the plain-text resend takes no pacing slot of its own: it happens at most once per
        # request that was in flight when the server first refused, and a refusal costs nothing
        return await self._call(messages, sample_index, None)

    @staticmethod
    def check_rejection(schema: Optional[ResponseSchema], status: int, message: str) -> None:
        if schema is not None and rejects_structured(status, message):
            raise StructuredOutputRejected(f"HTTP {status}: {message}"[:300])

    def stainless_error(self, sdk: Any, err: Exception, schema: Optional[ResponseSchema]) -> Exception:
        """Our error kind for an exception of the openai or anthropic SDK (both generated by
        Stainless: the same APITimeoutError / APIConnectionError / APIStatusError classes)."""
        if isinstance(err, sdk.APITimeoutError):
            return unreachable(err) or TransientError(f"timeout after {self.spec.timeout_s:g}s")
        if isinstance(err, sdk.APIConnectionError):
            return unreachable(err) or TransientError(f"connection error: {err.__cause__ or err}"[:300])
        self.check_rejection(schema, err.status_code, err.message)
        return status_error(err.status_code, err.message, err.response.headers)


# ============================================================================ shared helpers
# Words a 400/422 names when the server does not support the structured-output fields.
_REJECTION_MARKERS = re.compile(
    r"response_format|json_schema|structured|tool_choice|\btools?\b|response_?schema|responseschema|"
    r"response_?mime_?type|responsemimetype|input_schema",
    re.IGNORECASE,
)


def sdk_keywords(method: Any) -> set[str]:
    """The keyword arguments an SDK's create() takes, less those the adapter sets itself."""
    import inspect

    return set(inspect.signature(method).parameters) - {"self", "messages", "model", "stream", "timeout"}


def rejects_structured(status: int, message: str) -> bool:
    """True when an HTTP error says the server does not take the structured-output fields
    (vLLM/llama.cpp/older proxies answer 400 or 422 naming `response_format` or `tools`), so
    the request should be sent again as plain text rather than fail the row."""
    return status in (400, 422) and bool(_REJECTION_MARKERS.search(message or ""))


def retry_after(headers: Any) -> Optional[float]:
    """Seconds from `retry-after-ms` or `Retry-After` (delta seconds or an HTTP date)."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return float(ms) / 1000
        value = headers.get("retry-after")
    except Exception:
        return None
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def status_error(status: int, message: str, headers: Any = None) -> Exception:
    """Map an HTTP status to our error kinds."""
    text = f"HTTP {status}: {message}"[:500]
    if status in (401, 403):
        return FatalError(text)
    if status in (408, 409, 429) or status >= 500:
        return TransientError(text, retry_after=retry_after(headers), status=status)
    return PermanentError(text)


_CONNECT_FAILURES = ("ConnectError", "ConnectTimeout", "ClientConnectorError", "ClientConnectorDNSError",
                     "ConnectionRefusedError", "gaierror")


def _never_connected(err: BaseException) -> Optional[BaseException]:
    """The exception in `err`'s cause chain that says no connection was ever made
    (refused, DNS failure, connect timeout), or None: a dropped or timed-out request did
    reach the server and is an ordinary transient error."""
    seen = 0
    node: Optional[BaseException] = err
    while node is not None and seen < 10:
        if isinstance(node, (ConnectionRefusedError, socket.gaierror)) or type(node).__name__ in _CONNECT_FAILURES:
            return node
        node = node.__cause__ or node.__context__
        seen += 1
    return None


def unreachable(err: BaseException) -> Optional[UnreachableError]:
    root = _never_connected(err)
    return None if root is None else UnreachableError(f"{type(root).__name__}: {root}"[:300])


def network_error(err: BaseException) -> Optional[TransientError]:
    """httpx/anyio/asyncio timeouts and dropped connections, whatever library raised them."""
    never = unreachable(err)
    if never is not None:
        return never
    name = type(err).__name__
    module = type(err).__module__ or ""
    if isinstance(err, (asyncio.TimeoutError, TimeoutError)) or "Timeout" in name:
        return TransientError(f"timeout: {name}")
    http_libraries = ("httpx", "httpx2", "httpcore", "aiohttp", "anyio")
    if isinstance(err, (ConnectionError, OSError)) or module.split(".")[0] in http_libraries:
        return TransientError(f"connection error: {name}: {err}"[:300])
    return None


def google_credentials_present() -> bool:
    """Application Default Credentials on disk (checked without any network call)."""
    adc_env = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if adc_env:
        if not Path(adc_env).is_file():
            raise UsageError(f"GOOGLE_APPLICATION_CREDENTIALS points to a missing file: {adc_env}")
        return True
    config_dir = os.environ.get("CLOUDSDK_CONFIG") or os.path.join(os.path.expanduser("~"), ".config", "gcloud")
    return Path(config_dir, "application_default_credentials.json").is_file()


def check_vertex(cls: type[ServiceProvider], creds: Credentials) -> None:
    """A *-vertex provider's needs: project, location and Google credentials."""
    missing = [" / ".join(s.looked_at) for s in (creds.project, creds.location) if not s.value]
    if missing:
        raise UsageError(f"provider {cls.name} needs {' and '.join(missing)}")
    if not creds.api_key.value and not google_credentials_present():
        raise UsageError(
            f"provider {cls.name} found no Google credentials: run `gcloud auth application-default "
            "login`, set GOOGLE_APPLICATION_CREDENTIALS, or pass an access token as SERVICE_LLM_API_KEY"
        )
