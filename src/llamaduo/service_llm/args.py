"""`ServiceLLMArgs`: the config keys every stage that calls a service LLM shares.

A mixin dataclass (`@dataclass class EvalArgs(ServiceLLMArgs)`): each field becomes a CLI flag
and a YAML key (`llamaduo.config.parse_config`); the original tool's key names are kept.
Values are validated by `ServiceLLM.from_args` (fail fast, no network), not here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from llamaduo.defaults import default_file
from llamaduo.service_llm import providers as _registry

#: the shipped providers, as found by the registry (providers/); `providers.names()` also
#: lists those registered later
PROVIDERS = _registry.names()
_KEYED = [c for c in _registry.all_providers() if c.key_env]


@dataclass
class ServiceLLMArgs:
    """Provider, credentials, pacing, retries, ledger and cost keys (see docs/service_llm.md)."""

    # --- the original tool's keys -------------------------------------------------------
    service_llm_provider: str = field(
        default="gemini",
        metadata={"help": "Service LLM provider: " + ", ".join(PROVIDERS) + "."},
    )
    service_llm_api_key: Optional[str] = field(
        default=None,
        repr=False,  # a stage that logs its args must not log the key
        metadata={
            "secret": True,
            "help": "API key. Default: env SERVICE_LLM_API_KEY, then the provider's own ("
            + "; ".join(f"{c.name}: {' / '.join(c.key_env)}" for c in _KEYED) + "). "
            "For *-vertex it is used as an OAuth access token if set; for anthropic-bedrock as "
            "a Bedrock API key. Never logged or stored.",
        },
    )
    service_model_name: str = field(
        default="",
        metadata={
            "help": "Model name at the provider (e.g. gpt-4.1, claude-sonnet-4-5, "
            "gemini-2.5-flash). Empty: the provider's default. For `local`: a local folder, a "
            "Hub id in the local cache, or the alias smollm2-135m-instruct (the default)."
        },
    )
    service_llm_gen_config_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "YAML of generation settings: provider-neutral (temperature, max_tokens, top_p, "
            "stop, seed; mapped to each provider's names), a provider's own names, or extras under "
            "a section named after the provider family ("
            + "/".join(f"{f}:" for f in _registry.families()) + "). Default: the shipped "
            "llamaduo/defaults/service_llm_gen.yaml (hosted providers); none for local."
        },
    )
    gcp_project_id: Optional[str] = field(
        default=None, metadata={"help": "GCP project for *-vertex providers. Default: env GCP_PROJECT_ID, "
                                        "then GOOGLE_CLOUD_PROJECT (anthropic-vertex: ANTHROPIC_VERTEX_PROJECT_ID first)."}
    )
    gcp_location: Optional[str] = field(
        default=None, metadata={"help": "GCP region for *-vertex providers. Default: env GCP_LOCATION, "
                                        "then GOOGLE_CLOUD_LOCATION (anthropic-vertex: CLOUD_ML_REGION first)."}
    )
    aws_location: Optional[str] = field(
        default=None,
        metadata={"help": "AWS region for anthropic-bedrock. Default: env AWS_LOCATION, AWS_REGION."},
    )
    rate_limit_per_minute: Optional[int] = field(
        default=None,
        metadata={
            "help": "Requests per minute, paced smoothly (one request every 60/RPM s); retries "
            "count too. 0 = no limit. Default (None): 0 (no limit) when service_llm_base_url is a "
            "loopback address (localhost, 127.0.0.1, ::1: a local server), else 60."
        },
    )
    # --- new keys ---------------------------------------------------------------------------
    tokens_per_minute: int = field(
        default=0,
        metadata={
            "help": "Tokens (input + output) per minute, never exceeded in any 60 s window. "
            "Each call reserves its estimated input plus max output tokens. 0 = no limit."
        },
    )
    request_timeout_s: float = field(
        default=120.0, metadata={"min": 0.001, "max": 86400, "help": "Per-request timeout in seconds; a timeout is retried."}
    )
    max_retries: int = field(
        default=6,
        metadata={
            "min": 0, "max": 100,
            "help": "Retries per call on 429, 5xx, timeouts and dropped connections (exponential "
            "backoff with jitter, Retry-After honoured). The SDKs' own retries are off."
        },
    )
    max_reasks: int = field(
        default=2,
        metadata={"help": "Re-asks when a reply is not valid JSON for the stage's schema."},
    )
    service_llm_base_url: Optional[str] = field(
        default=None,
        metadata={
            "help": "Base URL of the API, e.g. an OpenAI-compatible server (vLLM, Ollama, "
            "llama.cpp, TGI: http://localhost:8000/v1) or a proxy. Default: env "
            + ", ".join(f"{c.base_url_env[0]} ({c.name})" for c in _registry.all_providers() if c.base_url_env)
            + "."
        },
    )
    ledger_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "SQLite response ledger (cache + resume). Default: the stage's choice, else "
            "$LLAMADUO_CACHE/service_llm_ledger.sqlite (~/.cache/llamaduo/...)."
        },
    )
    no_cache: bool = field(
        default=False, metadata={"help": "Neither read nor write the response ledger."}
    )
    refresh_cache: bool = field(
        default=False,
        metadata={"help": "Ignore stored responses (call again) and overwrite them in the ledger."},
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "Print the number of calls and the estimated tokens and cost, then exit."},
    )
    max_cost_usd: Optional[float] = field(
        default=None,
        metadata={
            "min": 0,
            "help": "Budget in USD (prices from pricing_path): a call expected to take this run's "
            "spend past it does not start; finished work is kept. Default: no limit."
        },
    )
    pricing_path: str = field(
        default=default_file("pricing.yaml"),
        metadata={"help": "YAML of USD prices per 1M input/output tokens, per model (exact names, plus "
                          "`aliases: [..]` per entry), overriding the maintained genai-prices table; a model "
                          "neither knows is never priced by a prefix guess. Default: the shipped "
                          "llamaduo/defaults/pricing.yaml."},
    )
    max_input_tokens: int = field(
        default=0,
        metadata={
            "help": "Largest prompt, in estimated tokens (~4 characters each), sent in one call. "
            "0: the model's context window minus max output tokens where known "
            "(src/llamaduo/service_llm/limits.py), else 100000. Checked before any call."
        },
    )
    oversize_rows: str = field(
        default="refuse",
        metadata={
            "help": "A prompt over max_input_tokens: `refuse` (exit 2 before any call, naming the "
            "first one) or `skip` (not sent; counted as skipped_oversize and reported as failed)."
        },
    )

    def config_notes(self) -> list[str]:
        """Settings taken from the environment, by variable name (for `--print-config`)."""
        return _registry.describe_credentials(self)
