"""Where the key, base URL and cloud settings come from: config keys, ours, then the SDK's own.

Users already have `OPENAI_API_KEY` (or `ANTHROPIC_API_KEY`, `GEMINI_API_KEY`...) exported for
every other tool; refusing them made the first run fail. The providers' own variables are read
in the order their SDKs read them, after the config key and `SERVICE_LLM_API_KEY`, which keep
precedence (a key meant for this tool wins over a shell-wide one). Values are resolved here,
not left to the SDK, so that the fail-fast checks see them and the log and `--print-config`
can say WHICH variable was used: the name only, never the value.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

OURS = "SERVICE_LLM_API_KEY"
# The SDKs' own variables, in the SDKs' order (google-genai prefers GOOGLE_API_KEY).
KEY_VARS = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "gemini": ("GOOGLE_API_KEY", "GEMINI_API_KEY"),
    "anthropic-bedrock": ("AWS_BEARER_TOKEN_BEDROCK",),
}
BASE_URL_VARS = {
    "openai": ("OPENAI_BASE_URL",),
    "anthropic": ("ANTHROPIC_BASE_URL",),
    "anthropic-bedrock": ("ANTHROPIC_BEDROCK_BASE_URL",),
}
PROJECT_VARS = {"gemini-vertex": ("GCP_PROJECT_ID", "GOOGLE_CLOUD_PROJECT"),
                "anthropic-vertex": ("GCP_PROJECT_ID", "ANTHROPIC_VERTEX_PROJECT_ID", "GOOGLE_CLOUD_PROJECT")}
LOCATION_VARS = {"gemini-vertex": ("GCP_LOCATION", "GOOGLE_CLOUD_LOCATION"),
                 "anthropic-vertex": ("GCP_LOCATION", "CLOUD_ML_REGION", "GOOGLE_CLOUD_LOCATION")}
REGION_VARS = ("AWS_LOCATION", "AWS_REGION", "AWS_DEFAULT_REGION")


@dataclass(frozen=True)
class Setting:
    """A resolved value and where it came from (a config key or an env variable's name)."""

    value: Optional[str]
    source: Optional[str]
    looked_at: tuple[str, ...]


def _first(config_key: str, config_value: Optional[str], env_names: tuple[str, ...]) -> Setting:
    looked = (config_key, *env_names)
    if config_value:
        return Setting(config_value, config_key, looked)
    for name in env_names:
        value = os.environ.get(name)
        if value:
            return Setting(value, f"env {name}", looked)
    return Setting(None, None, looked)


def api_key(provider: str, args: Any) -> Setting:
    return _first("service_llm_api_key", args.service_llm_api_key, (OURS, *KEY_VARS.get(provider, ())))


def base_url(provider: str, args: Any) -> Setting:
    return _first("service_llm_base_url", args.service_llm_base_url, BASE_URL_VARS.get(provider, ()))


def gcp_project(provider: str, args: Any) -> Setting:
    return _first("gcp_project_id", args.gcp_project_id, PROJECT_VARS.get(provider, ("GCP_PROJECT_ID",)))


def gcp_location(provider: str, args: Any) -> Setting:
    return _first("gcp_location", args.gcp_location, LOCATION_VARS.get(provider, ("GCP_LOCATION",)))


def aws_region(args: Any) -> Setting:
    return _first("aws_location", args.aws_location, REGION_VARS)


def describe(args: Any) -> list[str]:
    """One line per setting taken from the environment, for the log and `--print-config`:
    names only, never values."""
    provider = (getattr(args, "service_llm_provider", "") or "").strip().lower()
    if provider in ("", "local", "reference"):
        return []
    settings = {"service_llm_api_key": api_key(provider, args), "service_llm_base_url": base_url(provider, args)}
    if provider.endswith("-vertex"):
        settings |= {"gcp_project_id": gcp_project(provider, args), "gcp_location": gcp_location(provider, args)}
    if provider == "anthropic-bedrock":
        settings["aws_location"] = aws_region(args)
    return [f"{key}: from {s.source}" + (" (value not shown)" if key == "service_llm_api_key" else "")
            for key, s in settings.items() if s.source and s.source.startswith("env ")]
