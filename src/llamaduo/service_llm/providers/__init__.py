"""The provider registry: every `ServiceProvider` subclass in this package, plus any given to
`register(cls)` (tests, plugins). Whatever lists providers (the CLI help, fail-fast checks,
credential lookup, log masking, noisy loggers) asks here, so adding a provider is one module.

`resolve_spec(args)` validates everything offline (fail fast, exit 2); `make_provider(spec)`
builds the adapter inside the event loop that uses it (SDK async clients bind to a loop).
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
import urllib.parse
from pathlib import Path
from typing import Any, Optional

import yaml

from llamaduo.errors import UsageError
from llamaduo.redact import register_secret_env_vars
from llamaduo.service_llm.providers.base import (
    MAX_TOKEN_KEYS,
    Credentials,
    Provider,
    ProviderSpec,
    RawCompletion,
    ServiceProvider,
)

__all__ = ["Provider", "ProviderSpec", "RawCompletion", "ServiceProvider", "all_providers", "describe_credentials",
           "env_vars", "get", "make_provider", "names", "noisy_loggers", "register", "resolve_spec", "unregister"]

logger = logging.getLogger("llamaduo.service_llm")
REPO_ROOT = Path(__file__).resolve().parents[4]  # a checkout's root (gen-config paths)
FALLBACK_MAX_OUTPUT_TOKENS = 4096  # only for TPM reservations and estimates

_registry: dict[str, type[ServiceProvider]] = {}
_discovered = False


# ============================================================================ registry
def missing_attributes(cls: type) -> list[str]:
    """The declarations `cls` lacks to be a provider (empty: complete)."""
    if not (isinstance(cls, type) and issubclass(cls, ServiceProvider)):
        return ["(not a ServiceProvider subclass)"]
    missing = [a for a in ServiceProvider.REQUIRED if not getattr(cls, a, None)]
    if not missing and set(cls.gen_names) != set(ServiceProvider.gen_names):
        missing.append(f"gen_names (must map each of {sorted(ServiceProvider.gen_names)})")
    return missing


def register(cls: type[ServiceProvider]) -> type[ServiceProvider]:
    """Add a provider class (usable as a decorator). Refuses an incomplete class or a name
    already taken by another class."""
    missing = missing_attributes(cls)
    if missing:
        raise TypeError(f"{cls.__name__} is not a complete provider: missing {', '.join(missing)}")
    other = _registry.get(cls.name)
    if other is not None and other is not cls:
        raise ValueError(f"provider name '{cls.name}' is taken by {other.__module__}.{other.__qualname__}")
    _registry[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    _registry.pop(name, None)


def _discover() -> None:
    """Import every module of this package once and register the provider classes it defines."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, ServiceProvider) and obj.__module__ == module.__name__
                    and "name" in vars(obj)):
                register(obj)


def all_providers() -> list[type[ServiceProvider]]:
    _discover()
    return list(_registry.values())


def names() -> tuple[str, ...]:
    return tuple(c.name for c in all_providers())


def get(name: str) -> type[ServiceProvider]:
    """The provider class called `name`; UsageError (exit 2) naming the choices otherwise."""
    _discover()
    cls = _registry.get((name or "").strip().lower())
    if cls is None:
        raise UsageError(f"unknown service_llm_provider '{name}'; choose one of: {', '.join(names())}")
    return cls


def families() -> tuple[str, ...]:
    """The gen-file section names (`openai:`, `anthropic:`...)."""
    return tuple(dict.fromkeys(c.family for c in all_providers()))


def env_vars() -> tuple[str, ...]:
    """Every environment variable a provider reads (credentials, URLs, project, region)."""
    out: dict[str, None] = {}
    for c in all_providers():
        for name in (*c.key_env, *c.base_url_env, *c.project_env, *c.location_env, *c.region_env, *c.secret_env):
            out[name] = None
    return tuple(out)


def secret_env_vars() -> tuple[str, ...]:
    """The variables whose values are credentials (masked in logs, cards and reports)."""
    return tuple(dict.fromkeys(v for c in all_providers() for v in (*c.key_env, *c.secret_env)))


# the masker (redact.py, imported by errors.py) learns the credential names from here, without importing us
register_secret_env_vars(secret_env_vars)


def noisy_loggers() -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for c in all_providers() for n in c.noisy_loggers))


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


def _load_gen_config(path: Optional[str], explicit: bool) -> dict:
    found = _find_config(path, explicit) if path else None
    if found is None:
        return {}
    try:
        data = yaml.safe_load(found.read_text()) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"generation config {found} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise UsageError(f"generation config {found} must be a mapping of generation keys")
    return data


def _gen_config(cls: type[ServiceProvider], args: Any, model: str, base_url: Optional[str]) -> dict:
    from llamaduo.service_llm import gen_settings

    path = args.service_llm_gen_config_path or cls.default_gen_config
    where = path or "(defaults)"
    raw = _load_gen_config(path, explicit=bool(args.service_llm_gen_config_path))
    allowed = cls.allowed_gen_keys()
    gen = gen_settings.to_provider(cls, raw, where, allowed, families())
    gen = cls.adjust_gen(gen, model, base_url, where)
    if allowed is not None:
        unknown = sorted(set(gen) - allowed)
        if unknown:
            raise UsageError(f"generation config {where}: unknown key(s) {unknown} for provider {cls.name}")
    gen = cls.validate_gen(dict(gen), where)
    for key in MAX_TOKEN_KEYS:
        if key in gen and (not isinstance(gen[key], int) or isinstance(gen[key], bool) or gen[key] < 1):
            raise UsageError(f"generation config {where}: {key} must be a positive integer, got {gen[key]!r}")
    return gen


def resolve_spec(args: Any) -> ProviderSpec:
    """Validate the provider keys offline; raise UsageError with one clear line."""
    from llamaduo.service_llm import credentials

    cls = get(args.service_llm_provider)
    url = credentials.base_url(cls, args)
    base_url = _check_url(url.value) if url.value else None
    model = (args.service_model_name or "").strip() or cls.default_model
    creds = Credentials(api_key=credentials.api_key(cls, args), base_url=base_url,
                        project=credentials.gcp_project(cls, args),
                        location=credentials.gcp_location(cls, args),
                        region=credentials.aws_region(cls, args))
    for line in credentials.describe(cls, args):
        logger.info("service LLM %s: %s", cls.name, line)
    cls.check_credentials(creds)
    # the generation config last: validating it may import the SDK (slow), the checks above are cheap
    gen = _gen_config(cls, args, model, base_url)
    cls.check_model(model)
    max_out = cls.max_output_tokens(gen) or FALLBACK_MAX_OUTPUT_TOKENS
    return ProviderSpec(
        provider=cls.name,
        model=model,
        gen_config=gen,
        base_url=base_url,
        timeout_s=float(args.request_timeout_s),
        max_output_tokens=int(max_out),
        api_key=creds.api_key.value,
        gcp_project_id=creds.project.value,
        gcp_location=creds.location.value,
        aws_location=creds.region.value,
    )


def describe_credentials(args: Any) -> list[str]:
    """The settings `args` takes from the environment, by variable name (never a value);
    empty for an unknown provider (the fail-fast check names that one)."""
    from llamaduo.service_llm import credentials

    name = (getattr(args, "service_llm_provider", "") or "").strip().lower()
    return credentials.describe(next((c for c in all_providers() if c.name == name), None), args)


def make_provider(spec: ProviderSpec) -> Provider:
    """Build the adapter for `spec` (call inside the event loop that will use it)."""
    return get(spec.provider)(spec)
