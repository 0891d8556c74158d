"""Bad usage is refused by ServiceLLM.from_args before any call or model load (exit 2)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from llamaduo.errors import UsageError
from llamaduo.service_llm import ServiceLLM, ServiceLLMArgs
from llamaduo.service_llm.providers import resolve_spec


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch, tmp_path):
    for var in ("SERVICE_LLM_API_KEY", "GCP_PROJECT_ID", "GCP_LOCATION", "AWS_LOCATION", "AWS_REGION",
                "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE",
                "AWS_BEARER_TOKEN_BEDROCK", "GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws or ~/.config/gcloud


def build(**kw) -> ServiceLLM:
    kw.setdefault("no_cache", True)
    return ServiceLLM.from_args(ServiceLLMArgs(**kw), workers=2, show_progress=False)


@pytest.mark.parametrize("kwargs, message", [
    (dict(service_llm_provider="gpt"), "unknown service_llm_provider 'gpt'; choose one of: "),
    (dict(service_llm_provider="openai"), "needs an API key"),
    (dict(service_llm_provider="anthropic"), "needs an API key"),
    (dict(service_llm_provider="gemini"), "needs an API key"),
    (dict(service_llm_provider="gemini-vertex"), "needs gcp_project_id / GCP_PROJECT_ID / GOOGLE_CLOUD_PROJECT and gcp_location / GCP_LOCATION"),
    (dict(service_llm_provider="anthropic-vertex", gcp_project_id="p", gcp_location="l"), "no Google credentials"),
    (dict(service_llm_provider="anthropic-bedrock"), "needs an AWS region; looked at aws_location, AWS_LOCATION"),
    (dict(service_llm_provider="anthropic-bedrock", aws_location="us-east-1"), "no AWS credentials"),
    (dict(service_llm_provider="openai", service_llm_api_key="k", service_llm_gen_config_path="nope.yaml"),
     "service_llm_gen_config_path not found: nope.yaml"),
    (dict(service_llm_provider="openai", service_llm_base_url="localhost:8000"), "not an http(s) URL"),
    (dict(service_llm_provider="openai", service_llm_base_url="ftp://host/v1"), "not an http(s) URL"),
    (dict(service_llm_provider="gemini", service_llm_api_key="k", service_model_name="unpriced-model",
          max_cost_usd=1.0), "no price for model 'unpriced-model'"),
    (dict(service_llm_provider="gemini", service_llm_api_key="k", pricing_path="missing.yaml"),
     "pricing file not found"),
    (dict(service_llm_provider="local", service_model_name="/no/such/model"), "local service model"),
    (dict(service_llm_provider="openai", service_llm_api_key="k", rate_limit_per_minute=-1), "rate_limit_per_minute"),
    (dict(service_llm_provider="openai", service_llm_api_key="k", max_cost_usd=0.0), "max_cost_usd must be > 0"),
    (dict(service_llm_provider="openai", service_llm_api_key="k", no_cache=True, refresh_cache=True), "exclude"),
])
def test_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        build(**kwargs)


def test_bad_gen_config_keys_are_refused(tmp_path):
    bad = tmp_path / "gen.yaml"
    bad.write_text("max_tokens: 100\nmax_token: 5\n")
    with pytest.raises(UsageError, match=r"unknown key\(s\) \['max_token'\] for provider openai"):
        build(service_llm_provider="openai", service_llm_api_key="k", service_llm_gen_config_path=str(bad))
    with pytest.raises(UsageError, match="invalid for gemini"):
        build(service_llm_provider="gemini", service_llm_api_key="k", service_llm_gen_config_path=str(bad))
    bad.write_text("max_tokens: -3\n")
    with pytest.raises(UsageError, match="positive integer"):
        build(service_llm_provider="anthropic", service_llm_api_key="k", service_llm_gen_config_path=str(bad))


def test_valid_configurations_build_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVICE_LLM_API_KEY", "from-env")
    assert build(service_llm_provider="openai").spec.api_key == "from-env"
    assert build(service_llm_provider="openai").model == "gpt-4.1"  # the provider default
    assert build(service_llm_provider="anthropic").spec.gen_config["max_tokens"] == 4096
    assert build(service_llm_provider="gemini").spec.gen_config["max_output_tokens"] == 4096
    monkeypatch.delenv("SERVICE_LLM_API_KEY")
    # keyless OpenAI-compatible server (vLLM, Ollama...)
    assert build(service_llm_provider="openai", service_llm_base_url="http://localhost:8000/v1").spec.api_key is None
    # Vertex with Application Default Credentials on disk; Bedrock with a Bedrock API key
    adc = tmp_path / "adc.json"
    adc.write_text("{}")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    monkeypatch.setenv("GCP_PROJECT_ID", "p")
    monkeypatch.setenv("GCP_LOCATION", "europe-west1")
    assert build(service_llm_provider="gemini-vertex").spec.gcp_location == "europe-west1"
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "bedrock-key")
    assert build(service_llm_provider="anthropic-bedrock", aws_location="us-west-2").spec.aws_location == "us-west-2"


def test_api_key_is_not_in_repr():
    assert "sk-SECRET-9" not in repr(ServiceLLMArgs(service_llm_api_key="sk-SECRET-9"))
    spec = resolve_spec(ServiceLLMArgs(service_llm_provider="openai", service_llm_api_key="sk-SECRET-9"))
    assert "sk-SECRET-9" not in repr(spec)
    llm = build(service_llm_provider="openai", service_llm_api_key="sk-SECRET-9")
    assert "sk-SECRET-9" not in llm.describe()


def test_cli_exits_2_with_one_line(repo_root):
    env = {k: v for k, v in os.environ.items() if k != "SERVICE_LLM_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join([str(repo_root / "src"), str(repo_root)])
    proc = subprocess.run([sys.executable, "-m", "tests.servers.service_client", "--provider", "anthropic",
                           "--api-key", ""], cwd=repo_root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: provider anthropic needs an API key")
