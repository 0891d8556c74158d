"""One thin adapter per provider SDK; the only module that imports an SDK.

Each adapter turns a chat (`[{"role": "user"|"assistant", "content": str}, ...]`) into one
SDK call and the SDK's answer into a `RawCompletion`, and maps SDK exceptions onto three
kinds (records.py): TransientError (retry: 429, 5xx, timeouts, dropped connections, with
the server's Retry-After), PermanentError (this request will never work) and FatalError
(no request will work: rejected credentials). The SDKs' own retries are switched off
(`max_retries=0`, no google-genai retry options) so that every retry is paced, counted and
bounded in one place (scheduler.py).

`resolve_spec(args)` validates everything offline (fail fast, exit 2) and `make_provider`
builds the client inside the event loop that uses it (SDK async clients bind to a loop).
"""
from __future__ import annotations

import asyncio
import email.utils
import importlib.util
import inspect
import json
import logging
import os
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import yaml

from llamaduo.defaults import default_file
from llamaduo.errors import UsageError
from llamaduo.service_llm import credentials, gen_settings
from llamaduo.service_llm.args import PROVIDERS, ServiceLLMArgs
from llamaduo.service_llm.pricing import estimate_tokens
from llamaduo.service_llm import schema_wire
from llamaduo.service_llm.records import (
    FatalError,
    PermanentError,
    ResponseSchema,
    StructuredOutputRejected,
    TransientError,
    UnreachableError,
)

logger = logging.getLogger("llamaduo.service_llm")

__all__ = [
    "FatalError",
    "Provider",
    "ProviderSpec",
    "RawCompletion",
    "make_provider",
    "resolve_spec",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
logger = logging.getLogger("llamaduo.service_llm")

# Chosen 2026-12-02. openai/anthropic: names in the installed SDKs' model Literals
# (openai.types.ChatModel, anthropic.types.Model; tests/test_gen_settings.py checks them; the
# vertex/bedrock ids are the same model's platform spelling); google-genai ships no list.
# Non-reasoning models, so the shared temperature/max_tokens settings apply unchanged.
DEFAULT_MODELS = {
    "openai": "gpt-4.1",
    "anthropic": "claude-sonnet-4-5",
    "anthropic-vertex": "claude-sonnet-4-5@20250929",
    "anthropic-bedrock": "anthropic.claude-sonnet-4-5-20250929-v1:0",
    "gemini": "gemini-2.5-flash",
    "gemini-vertex": "gemini-2.5-flash",
    "local": "smollm2-135m-instruct",
}
# One provider-neutral file for every hosted provider (src/llamaduo/service_llm/gen_settings.py).
NEUTRAL_GEN_CONFIG = default_file("service_llm_gen.yaml")
DEFAULT_GEN_CONFIGS = {p: NEUTRAL_GEN_CONFIG for p in ("openai", "anthropic", "anthropic-vertex",
                                                       "anthropic-bedrock", "gemini", "gemini-vertex")}
LOCAL_GEN_KEYS = {"max_new_tokens", "max_tokens", "max_output_tokens", "temperature", "top_p",
                  "top_k", "do_sample", "repetition_penalty", "stop_strings"}
LOCAL_BATCH_SIZE = 8
LOCAL_GEN_DEFAULTS = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7, "top_p": 0.9}
ANTHROPIC_DEFAULT_MAX_TOKENS = 4096  # the Messages API refuses a call without max_tokens
FALLBACK_MAX_OUTPUT_TOKENS = 4096  # only for TPM reservations and estimates
_MAX_TOKEN_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "max_new_tokens")


@dataclass(frozen=True)
class RawCompletion:
    text: str
    input_tokens: int
    output_tokens: int
    model: str
    finish_reason: str
    latency_s: float


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


class Provider(Protocol):
    async def complete(self, messages: Sequence[dict], sample_index: int,
                       schema: Optional[ResponseSchema] = None) -> RawCompletion: ...

    async def aclose(self) -> None: ...


# ============================================================================ validation
def _check_url(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UsageError(f"service_llm_base_url is not an http(s) URL: '{url}'")
    return url.rstrip("/")


def _find_config(path: str, explicit: bool) -> Optional[Path]:
    """A gen-config path as given (relative to the working dir), else relative to the repo."""
    candidates = [Path(path)]
    if not Path(path).is_absolute():
        candidates.append(REPO_ROOT / path)
    for cand in candidates:
        if cand.is_file():
            return cand
    if explicit:
        raise UsageError(f"service_llm_gen_config_path not found: {path}")
    return None


def _load_gen_config(args: ServiceLLMArgs, provider: str) -> dict:
    explicit = bool(args.service_llm_gen_config_path)
    path = args.service_llm_gen_config_path or DEFAULT_GEN_CONFIGS.get(provider)
    if not path:
        return {}
    found = _find_config(path, explicit)
    if found is None:
        return {}
    try:
        data = yaml.safe_load(found.read_text()) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"generation config {found} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise UsageError(f"generation config {found} must be a mapping of generation keys")
    return data


def _allowed_keys(provider: str) -> Optional[set[str]]:
    """Keyword arguments the provider's SDK call accepts (None: validated another way)."""
    if provider == "openai":
        from openai.resources.chat.completions import AsyncCompletions

        params = inspect.signature(AsyncCompletions.create).parameters
        return set(params) - {"self", "messages", "model", "stream", "timeout"}
    if provider.startswith("anthropic"):
        from anthropic.resources.messages import AsyncMessages

        params = inspect.signature(AsyncMessages.create).parameters
        return set(params) - {"self", "messages", "model", "stream", "timeout"}
    if provider == "local":
        return LOCAL_GEN_KEYS
    return None


def _validate_gen_config(provider: str, gen: dict, where: str) -> dict:
    gen = dict(gen)
    allowed = _allowed_keys(provider)
    if allowed is not None:
        unknown = sorted(set(gen) - allowed)
        if unknown:
            raise UsageError(
                f"generation config {where}: unknown key(s) {unknown} for provider {provider}"
            )
    if provider.startswith("gemini"):
        from google.genai import types

        try:
            types.GenerateContentConfig(**gen)
        except Exception as err:  # pydantic.ValidationError: names the bad key and type
            first = str(err).splitlines()[:3]
            raise UsageError(f"generation config {where} is invalid for {provider}: {' '.join(first)}") from None
    if provider.startswith("anthropic"):
        gen.setdefault("max_tokens", ANTHROPIC_DEFAULT_MAX_TOKENS)
    if provider == "local":
        gen = {**LOCAL_GEN_DEFAULTS, **gen}
        for alias in ("max_tokens", "max_output_tokens"):
            if alias in gen:
                gen["max_new_tokens"] = gen.pop(alias)
    for key in _MAX_TOKEN_KEYS:
        if key in gen and (not isinstance(gen[key], int) or isinstance(gen[key], bool) or gen[key] < 1):
            raise UsageError(f"generation config {where}: {key} must be a positive integer, got {gen[key]!r}")
    return gen


def _google_credentials_present() -> bool:
    """Application Default Credentials on disk (checked without any network call)."""
    adc_env = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if adc_env:
        if not Path(adc_env).is_file():
            raise UsageError(f"GOOGLE_APPLICATION_CREDENTIALS points to a missing file: {adc_env}")
        return True
    config_dir = os.environ.get("CLOUDSDK_CONFIG") or os.path.join(os.path.expanduser("~"), ".config", "gcloud")
    return Path(config_dir, "application_default_credentials.json").is_file()


def _aws_credentials_present() -> bool:
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if env.get("AWS_PROFILE") or env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return True
    if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return True
    home = Path(os.path.expanduser("~"))
    return (home / ".aws" / "credentials").is_file() or (home / ".aws" / "config").is_file()


def _check_local_model(name: str) -> None:
    from llamaduo.models import is_embedded_alias

    if is_embedded_alias(name) or Path(name).exists():
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
    except Exception:  # not a valid repo id either
        cached = None
    if not isinstance(cached, str):
        raise UsageError(
            f"local service model '{name}' is neither a folder, the alias smollm2-135m-instruct, "
            "nor a model in the local Hugging Face cache"
        )


def resolve_spec(args: ServiceLLMArgs) -> ProviderSpec:
    """Validate the provider keys offline; raise UsageError with one clear line."""
    provider = (args.service_llm_provider or "").strip().lower()
    if provider not in PROVIDERS:
        raise UsageError(
            f"unknown service_llm_provider '{args.service_llm_provider}'; choose one of: {', '.join(PROVIDERS)}"
        )
    url = credentials.base_url(provider, args)
    base_url = _check_url(url.value) if url.value else None
    model = (args.service_model_name or "").strip() or DEFAULT_MODELS[provider]
    key = credentials.api_key(provider, args)
    api_key = key.value
    project_s, location_s = credentials.gcp_project(provider, args), credentials.gcp_location(provider, args)
    project, location = project_s.value, location_s.value
    region = credentials.aws_region(args).value

    if provider in ("anthropic", "gemini") or (provider == "openai" and base_url is None):
        if not api_key:
            hint = (" (or set service_llm_base_url / OPENAI_BASE_URL for a keyless OpenAI-compatible server)"
                    if provider == "openai" else "")
            raise UsageError(
                f"provider {provider} needs an API key; looked at {', '.join(key.looked_at)}: none is set{hint}"
            )
    for line in credentials.describe(args):
        logger.info("service LLM %s: %s", provider, line)
    if provider.endswith("-vertex"):
        missing = [" / ".join(s.looked_at) for s in (project_s, location_s) if not s.value]
        if missing:
            raise UsageError(f"provider {provider} needs {' and '.join(missing)}")
        if not api_key and not _google_credentials_present():
            raise UsageError(
                f"provider {provider} found no Google credentials: run `gcloud auth application-default "
                "login`, set GOOGLE_APPLICATION_CREDENTIALS, or pass an access token as SERVICE_LLM_API_KEY"
            )
    if provider == "anthropic-bedrock":
        if not region:
            raise UsageError("provider anthropic-bedrock needs an AWS region; looked at "
                             + ", ".join(credentials.aws_region(args).looked_at) + ": none is set")
        if not api_key and not os.environ.get("AWS_BEARER_TOKEN_BEDROCK"):
            if not _aws_credentials_present():
                raise UsageError(
                    "provider anthropic-bedrock found no AWS credentials: set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a Bedrock API key as SERVICE_LLM_API_KEY"
                )
            if importlib.util.find_spec("boto3") is None:
                raise UsageError(
                    "provider anthropic-bedrock with AWS credentials needs boto3: pip install "
                    "'anthropic[bedrock]' (or use a Bedrock API key as SERVICE_LLM_API_KEY)"
                )
    # the generation config last: validating it imports the SDK (slow), the checks above are cheap
    where = args.service_llm_gen_config_path or DEFAULT_GEN_CONFIGS.get(provider, "(defaults)")
    neutral = gen_settings.to_provider(provider, model, _load_gen_config(args, provider), where, base_url,
                                       _allowed_keys(provider))
    gen = _validate_gen_config(provider, neutral, where)
    max_out = next((gen[k] for k in _MAX_TOKEN_KEYS if k in gen), FALLBACK_MAX_OUTPUT_TOKENS)
    if provider == "local":
        _check_local_model(model)
        max_out = gen["max_new_tokens"]
    return ProviderSpec(
        provider=provider,
        model=model,
        gen_config=gen,
        base_url=base_url,
        timeout_s=float(args.request_timeout_s),
        max_output_tokens=int(max_out),
        api_key=api_key,
        gcp_project_id=project,
        gcp_location=location,
        aws_location=region,
    )


# ============================================================================ helpers
def _retry_after(headers: Any) -> Optional[float]:
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


def _status_error(status: int, message: str, headers: Any = None) -> Exception:
    """Map an HTTP status to our error kinds."""
    text = f"HTTP {status}: {message}"[:500]
    if status in (401, 403):
        return FatalError(text)
    if status in (408, 409, 429) or status >= 500:
        return TransientError(text, retry_after=_retry_after(headers), status=status)
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


def _unreachable(err: BaseException) -> Optional[UnreachableError]:
    root = _never_connected(err)
    return None if root is None else UnreachableError(f"{type(root).__name__}: {root}"[:300])


def _network_error(err: BaseException) -> Optional[TransientError]:
    """httpx/anyio/asyncio timeouts and dropped connections, whatever library raised them."""
    unreachable = _unreachable(err)
    if unreachable is not None:
        return unreachable
    name = type(err).__name__
    module = type(err).__module__ or ""
    if isinstance(err, (asyncio.TimeoutError, TimeoutError)) or "Timeout" in name:
        return TransientError(f"timeout: {name}")
    http_libraries = ("httpx", "httpx2", "httpcore", "aiohttp", "anyio")
    if isinstance(err, (ConnectionError, OSError)) or module.split(".")[0] in http_libraries:
        return TransientError(f"connection error: {name}: {err}"[:300])
    return None


# ============================================================================ adapters
class _StructuredFallback:
    """`complete` for the SDK adapters: ask for native structured output when the job has
    a schema; if the server refuses those fields (an OpenAI-compatible server without
    `response_format`, a proxy without tools), warn once and send this and every later
    request of the run as plain text, which the stage's parser reads the same way."""

    spec: ProviderSpec
    native_structured: bool = True

    async def _call(self, messages: Sequence[dict], sample_index: int,
                    schema: Optional[ResponseSchema]) -> RawCompletion:
        raise NotImplementedError

    async def complete(self, messages: Sequence[dict], sample_index: int,
                       schema: Optional[ResponseSchema] = None) -> RawCompletion:
        if schema is not None and self.native_structured:
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
    def _check_rejection(schema: Optional[ResponseSchema], status: int, message: str) -> None:
        if schema is not None and schema_wire.rejects_structured(status, message):
            raise StructuredOutputRejected(f"HTTP {status}: {message}"[:300])


class OpenAIProvider(_StructuredFallback):
    """Chat Completions through AsyncOpenAI (api.openai.com or any OpenAI-compatible server)."""

    def __init__(self, spec: ProviderSpec) -> None:
        import openai

        self._openai = openai
        self.spec = spec
        self.client = openai.AsyncOpenAI(
            api_key=spec.api_key or "EMPTY",  # keyless local servers still need a string here
            base_url=spec.base_url,
            max_retries=0,
            timeout=spec.timeout_s,
        )

    async def _call(self, messages: Sequence[dict], sample_index: int,
                    schema: Optional[ResponseSchema]) -> RawCompletion:
        openai = self._openai
        gen = dict(self.spec.gen_config)
        gen["seed"] = int(gen.get("seed", 0)) + sample_index
        if schema is not None:
            gen.update(schema_wire.openai_kwargs(schema))
        start = time.monotonic()
        try:
            resp = await self.client.chat.completions.create(model=self.spec.model, messages=list(messages), **gen)
        except openai.APITimeoutError as err:
            raise _unreachable(err) or TransientError(f"timeout after {self.spec.timeout_s:g}s") from None
        except openai.APIConnectionError as err:
            raise _unreachable(err) or TransientError(f"connection error: {err.__cause__ or err}"[:300]) from None
        except openai.APIStatusError as err:
            self._check_rejection(schema, err.status_code, err.message)
            raise _status_error(err.status_code, err.message, err.response.headers) from None
        latency = time.monotonic() - start
        usage = getattr(resp, "usage", None)
        if not resp.choices:
            text, finish = "", "no_choices"
        else:
            choice = resp.choices[0]
            text = choice.message.content or ""
            finish = choice.finish_reason or ""
            if not text and getattr(choice.message, "refusal", None):
                text, finish = "", "refusal"
        in_tok = usage.prompt_tokens if usage else estimate_tokens("\n".join(m["content"] for m in messages))
        out_tok = usage.completion_tokens if usage else estimate_tokens(text)
        return RawCompletion(text, in_tok, out_tok, resp.model or self.spec.model, str(finish), latency)

    async def aclose(self) -> None:
        await self.client.close()


class AnthropicProvider(_StructuredFallback):
    """Messages API through AsyncAnthropic, AsyncAnthropicVertex or AsyncAnthropicBedrock."""

    def __init__(self, spec: ProviderSpec) -> None:
        import anthropic

        self._anthropic = anthropic
        self.spec = spec
        common = dict(base_url=spec.base_url, max_retries=0, timeout=spec.timeout_s)
        if spec.provider == "anthropic":
            self.client = anthropic.AsyncAnthropic(api_key=spec.api_key, **common)
        elif spec.provider == "anthropic-vertex":
            self.client = anthropic.AsyncAnthropicVertex(
                region=spec.gcp_location, project_id=spec.gcp_project_id,
                access_token=spec.api_key, **common,
            )
        else:
            self.client = anthropic.AsyncAnthropicBedrock(
                aws_region=spec.aws_location, api_key=spec.api_key, **common,
            )

    async def _call(self, messages: Sequence[dict], sample_index: int,
                    schema: Optional[ResponseSchema]) -> RawCompletion:
        anthropic = self._anthropic
        gen = dict(self.spec.gen_config)
        if schema is not None:
            gen.update(schema_wire.anthropic_kwargs(schema))
        start = time.monotonic()
        try:
            resp = await self.client.messages.create(model=self.spec.model, messages=list(messages), **gen)
        except anthropic.APITimeoutError as err:
            raise _unreachable(err) or TransientError(f"timeout after {self.spec.timeout_s:g}s") from None
        except anthropic.APIConnectionError as err:
            raise _unreachable(err) or TransientError(f"connection error: {err.__cause__ or err}"[:300]) from None
        except anthropic.APIStatusError as err:
            self._check_rejection(schema, err.status_code, err.message)
            raise _status_error(err.status_code, err.message, err.response.headers) from None
        latency = time.monotonic() - start
        blocks = resp.content or []
        tool_input = _tool_input(blocks, schema)
        text = tool_input if tool_input is not None else "".join(
            getattr(b, "text", "") for b in blocks if getattr(b, "type", "") == "text")
        finish = resp.stop_reason or ("no_content" if not blocks else "")
        usage = resp.usage
        return RawCompletion(text, usage.input_tokens, usage.output_tokens, resp.model or self.spec.model,
                             str(finish), latency)

    async def aclose(self) -> None:
        await self.client.close()


def _tool_input(blocks: Sequence[Any], schema: Optional[ResponseSchema]) -> Optional[str]:
    """The forced tool's input as JSON text: with a schema the answer is that tool_use
    block, never the text blocks around it (which may quote the data)."""
    if schema is None:
        return None
    for block in blocks:
        if getattr(block, "type", "") == "tool_use" and getattr(block, "name", "") == schema.name:
            return json.dumps(getattr(block, "input", None), ensure_ascii=False)
    return None


class GeminiProvider(_StructuredFallback):
    """generateContent through google-genai (`Client(...).aio`), AI Studio or Vertex AI."""

    def __init__(self, spec: ProviderSpec) -> None:
        from google import genai
        from google.genai import errors, types

        self._types = types
        self._errors = errors
        self.spec = spec
        # timeout is in milliseconds; no retry_options: google-genai then does not retry
        http = types.HttpOptions(base_url=spec.base_url, timeout=int(spec.timeout_s * 1000))
        if spec.provider == "gemini":
            self.client = genai.Client(api_key=spec.api_key, http_options=http)
        else:
            credentials = None
            if spec.api_key:
                from google.oauth2.credentials import Credentials

                credentials = Credentials(token=spec.api_key)
            self.client = genai.Client(vertexai=True, project=spec.gcp_project_id, location=spec.gcp_location,
                                       credentials=credentials, http_options=http)

    async def _call(self, messages: Sequence[dict], sample_index: int,
                    schema: Optional[ResponseSchema]) -> RawCompletion:
        types, errors = self._types, self._errors
        contents = [
            types.Content(role="model" if m["role"] == "assistant" else "user", parts=[types.Part(text=m["content"])])
            for m in messages
        ]
        gen = dict(self.spec.gen_config)
        gen["seed"] = int(gen.get("seed", 0)) + sample_index
        if schema is not None:
            gen.update(schema_wire.gemini_kwargs(schema))
        start = time.monotonic()
        try:
            resp = await self.client.aio.models.generate_content(
                model=self.spec.model, contents=contents, config=types.GenerateContentConfig(**gen)
            )
        except errors.APIError as err:
            headers = getattr(getattr(err, "response", None), "headers", None)
            self._check_rejection(schema, int(err.code or 0), str(err.message or err))
            raise _status_error(int(err.code or 0), str(err.message or err), headers) from None
        except Exception as err:
            mapped = _network_error(err)
            if mapped is None:
                raise
            raise mapped from None
        latency = time.monotonic() - start
        candidates = resp.candidates or []
        if not candidates:
            text, finish = "", "no_candidates"
        else:
            cand = candidates[0]
            parts = (cand.content.parts if cand.content and cand.content.parts else []) or []
            text = "".join(p.text for p in parts if getattr(p, "text", None) and not getattr(p, "thought", False))
            finish = cand.finish_reason.name if cand.finish_reason is not None else ""
        meta = resp.usage_metadata
        in_tok = (meta.prompt_token_count if meta and meta.prompt_token_count is not None
                  else estimate_tokens("\n".join(m["content"] for m in messages)))
        if meta:  # thinking tokens are billed as output
            out_tok = (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0)
        else:
            out_tok = estimate_tokens(text)
        return RawCompletion(text, in_tok, out_tok, resp.model_version or self.spec.model, finish, latency)

    async def aclose(self) -> None:
        await self.client.aio.aclose()


class LocalProvider:
    """An in-process transformers chat model (default: the embedded SmolLM2), for fully
    offline runs. Concurrent requests are gathered into left-padded batches (up to
    LOCAL_BATCH_SIZE) because batched generation on CPU is ~5x faster than one at a time
    (REFERENCE.md); one batch runs at a time, in a worker thread so the event loop stays free."""

    _cache: dict[str, tuple[Any, Any]] = {}  # model path -> (model, tokenizer), per process

    def __init__(self, spec: ProviderSpec) -> None:
        self.spec = spec
        self._pending: list[tuple[Sequence[dict], int, asyncio.Future]] = []
        self._runner: Optional[asyncio.Task] = None

    def _load(self) -> tuple[Any, Any]:
        from llamaduo.models import pick_device_dtype, resolve_model

        path = resolve_model(self.spec.model)
        if path not in self._cache:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            device, dtype = pick_device_dtype()
            tok = AutoTokenizer.from_pretrained(path)
            tok.padding_side = "left"  # decoder-only batches must be left-padded
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
            self._cache[path] = (model, tok)
        return self._cache[path]

    def _generate_batch(self, batch: list[tuple[Sequence[dict], int]]) -> list[RawCompletion]:
        import torch

        model, tok = self._load()
        start = time.monotonic()
        texts = [tok.apply_chat_template(list(msgs), add_generation_prompt=True, tokenize=False)
                 for msgs, _ in batch]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        gen = dict(self.spec.gen_config)
        if not gen.get("do_sample", False):
            for key in ("temperature", "top_p", "top_k"):
                gen.pop(key, None)
        torch.manual_seed(min(index for _, index in batch))
        with torch.no_grad():
            stop = {"tokenizer": tok} if gen.get("stop_strings") else {}  # generate() needs it for stop strings
            out = model.generate(**enc, **gen, **stop, pad_token_id=tok.pad_token_id)
        latency = time.monotonic() - start
        prompt_len = enc["input_ids"].shape[1]
        stops = {tok.eos_token_id, tok.pad_token_id} - {None}
        results = []
        for row, mask in zip(out[:, prompt_len:], enc["attention_mask"]):
            ids = row.tolist()
            end = next((i for i, t in enumerate(ids) if t in stops), None)
            new = ids if end is None else ids[:end]
            text = tok.decode(new, skip_special_tokens=True)
            results.append(RawCompletion(text, int(mask.sum()), max(1, len(new)), self.spec.model,
                                         "length" if end is None else "stop", latency))
        return results

    async def _run_batches(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:LOCAL_BATCH_SIZE], self._pending[LOCAL_BATCH_SIZE:]
            try:
                outs = await asyncio.to_thread(self._generate_batch, [(m, i) for m, i, _ in batch])
            except Exception as err:  # a model error fails these calls, not the event loop
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(PermanentError(f"local model failed: {type(err).__name__}: {err}"))
                continue
            for (_, _, fut), out in zip(batch, outs):
                if not fut.done():
                    fut.set_result(out)

    async def complete(self, messages: Sequence[dict], sample_index: int,
                       schema: Optional[ResponseSchema] = None) -> RawCompletion:
        """`schema` is not enforced here (no constrained decoding): the reply is free text,
        read by the stage's parser like any text-fallback reply."""
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((messages, sample_index, fut))
        if self._runner is None or self._runner.done():
            await asyncio.sleep(0)  # let the other workers enqueue, so the first batch is full
            if self._runner is None or self._runner.done():
                self._runner = asyncio.create_task(self._run_batches())
        return await fut

    async def aclose(self) -> None:
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)


def make_provider(spec: ProviderSpec) -> Provider:
    """Build the adapter for `spec` (call inside the event loop that will use it)."""
    if spec.provider == "openai":
        return OpenAIProvider(spec)
    if spec.provider.startswith("anthropic"):
        return AnthropicProvider(spec)
    if spec.provider.startswith("gemini"):
        return GeminiProvider(spec)
    if spec.provider == "local":
        return LocalProvider(spec)
    raise UsageError(f"unknown provider {spec.provider}")  # resolve_spec already refused it
