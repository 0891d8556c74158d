"""Where the key, base URL and cloud settings come from: the config key, `SERVICE_LLM_API_KEY`,
then the provider's own variables (declared on its class, read in its SDK's order), so users'
exported `OPENAI_API_KEY` etc. work. Resolved here, not by the SDK, so the fail-fast checks see
them and the log and `--print-config` can name WHICH variable was used, never its value.

Every function takes the provider *class* (from the registry, providers/): this module sits below
the registry, which calls it, so it never imports the registry back.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

OURS = "SERVICE_LLM_API_KEY"
# Defaults for settings a provider class does not declare (its *_env attributes, providers/).
PROJECT_VARS = ("GCP_PROJECT_ID",)
LOCATION_VARS = ("GCP_LOCATION",)
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


def api_key(cls: Any, args: Any) -> Setting:
    return _first("service_llm_api_key", args.service_llm_api_key, (OURS, *cls.key_env))


def base_url(cls: Any, args: Any) -> Setting:
    return _first("service_llm_base_url", args.service_llm_base_url, cls.base_url_env)


def gcp_project(cls: Any, args: Any) -> Setting:
    return _first("gcp_project_id", args.gcp_project_id, cls.project_env or PROJECT_VARS)


def gcp_location(cls: Any, args: Any) -> Setting:
    return _first("gcp_location", args.gcp_location, cls.location_env or LOCATION_VARS)


def aws_region(cls: Any, args: Any) -> Setting:
    return _first("aws_location", args.aws_location, cls.region_env or REGION_VARS)


def describe(cls: Any, args: Any) -> list[str]:
    """One line per setting of provider class `cls` (None: unknown provider) taken from the
    environment, for the log and `--print-config`: names only, never values."""
    if cls is None or not cls.takes_api_key and not cls.base_url_env:  # e.g. local, reference
        return []
    settings = {"service_llm_api_key": api_key(cls, args), "service_llm_base_url": base_url(cls, args)}
    if cls.project_env:
        settings |= {"gcp_project_id": gcp_project(cls, args), "gcp_location": gcp_location(cls, args)}
    if cls.region_env:
        settings["aws_location"] = aws_region(cls, args)
    return [f"{key}: from {s.source}" + (" (value not shown)" if key == "service_llm_api_key" else "")
            for key, s in settings.items() if s.source and s.source.startswith("env ")]
