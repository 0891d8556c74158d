"""Provider-neutral generation settings, current default models, and the providers' own
environment variables (issue 13), against the real SDKs and the local protocol server."""
from __future__ import annotations

import logging
import typing
from pathlib import Path

import pytest

from llamaduo.errors import UsageError
from llamaduo.service_llm import Job, ServiceLLM, ServiceLLMArgs
from llamaduo.service_llm import providers
from llamaduo.service_llm.credentials import LOCATION_VARS, PROJECT_VARS, REGION_VARS
from llamaduo.service_llm.providers import resolve_spec
from tests.inprocess import run_stage
from tests.servers.protocol_server import ProtocolServer

REPO = Path(__file__).resolve().parents[1]
HOSTED = ("openai", "anthropic", "anthropic-vertex", "anthropic-bedrock", "gemini", "gemini-vertex")
ORIGINAL = REPO / "tests/data/original_llamaduo/config"
ALL_ENV = set(providers.env_vars()) | {*PROJECT_VARS, *LOCATION_VARS, *REGION_VARS, "SERVICE_LLM_API_KEY"}
DEFAULT_MODELS = {c.name: c.default_model for c in providers.all_providers()}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ALL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws or gcloud credentials of the machine


def args(**kw) -> ServiceLLMArgs:
    kw.setdefault("no_cache", True)
    return ServiceLLMArgs(**kw)


def cloud_env(monkeypatch, tmp_path):
    adc = tmp_path / "adc.json"
    adc.write_text("{}")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p")
    monkeypatch.setenv("GOOGLE_CLOUD_LOCATION", "us-east5")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


def _literal_strings(tp) -> set[str]:
    out: set[str] = set()
    for arg in typing.get_args(tp):
        out |= _literal_strings(arg) if typing.get_args(arg) else ({arg} if isinstance(arg, str) else set())
    return out


def test_default_models_are_in_the_installed_sdks_model_lists():
    from anthropic.types import Model
    from openai.types import ChatModel

    openai_models, anthropic_models = _literal_strings(ChatModel), _literal_strings(Model)
    assert DEFAULT_MODELS["openai"] in openai_models
    assert DEFAULT_MODELS["anthropic"] in anthropic_models
    name, date = DEFAULT_MODELS["anthropic-vertex"].split("@")  # Vertex spells claude-x@DATE
    assert f"{name}-{date}" in anthropic_models
    bedrock = DEFAULT_MODELS["anthropic-bedrock"].removeprefix("anthropic.").rsplit("-v", 1)[0]
    assert bedrock in anthropic_models
    # google-genai ships no list: the docs name the date the default was chosen
    assert "chosen on 2026-12-02" in (REPO / "docs/service_llm.md").read_text()


@pytest.mark.parametrize("provider", HOSTED)
@pytest.mark.parametrize("gen_file", ["src/llamaduo/defaults/service_llm_gen.yaml", "config/gemini_gen_configs.yaml",
                                      "config/gpt_gen_configs.yaml", "config/claude_gen_configs.yaml"])
def test_every_shipped_gen_file_works_for_every_provider(provider, gen_file, monkeypatch, tmp_path):
    """Changing only the provider (and model) works with whichever shipped file a config pins."""
    cloud_env(monkeypatch, tmp_path)
    spec = resolve_spec(args(service_llm_provider=provider, service_llm_api_key="k", service_llm_gen_config_path=gen_file))
    max_name = "max_output_tokens" if provider.startswith("gemini") else "max_tokens"
    assert spec.gen_config[max_name] == 4096 and spec.max_output_tokens == 4096


@pytest.mark.parametrize("gen_file, provider, key", [
    ("gemini_gen_configs.yaml", "gemini", "max_output_tokens"),
    ("gpt_gen_configs.yaml", "openai", "max_tokens"),
    ("llama3_3b/eval/claude_gen_configs.yaml", "anthropic", "max_tokens"),
    ("llama3_3b/eval/gemini_gen_configs.yaml", "gemini-vertex", "max_output_tokens"),
])
def test_the_originals_gen_files_load_for_their_own_provider(gen_file, provider, key, monkeypatch, tmp_path):
    cloud_env(monkeypatch, tmp_path)
    spec = resolve_spec(args(service_llm_provider=provider, service_llm_api_key="k",
                             service_llm_gen_config_path=str(ORIGINAL / gen_file)))
    assert spec.gen_config[key] in (2048, 4096)


def test_neutral_keys_map_to_each_providers_names(tmp_path, caplog, monkeypatch):
    cloud_env(monkeypatch, tmp_path)
    gen = tmp_path / "gen.yaml"
    gen.write_text("temperature: 0.3\nmax_tokens: 77\ntop_p: 0.9\nstop: '###'\nseed: 5\n"
                   "gemini: {top_k: 7}\nanthropic: {stop_sequences: ['END']}\nopenai: {frequency_penalty: 0.5}\n")
    spec = lambda p: resolve_spec(args(service_llm_provider=p, service_llm_api_key="k",  # noqa: E731
                                       service_llm_gen_config_path=str(gen))).gen_config
    with caplog.at_level(logging.INFO, logger="llamaduo.service_llm"):
        assert spec("openai") == {"temperature": 0.3, "max_tokens": 77, "top_p": 0.9, "stop": "###", "seed": 5,
                                  "frequency_penalty": 0.5}
        assert spec("gemini") == {"temperature": 0.3, "max_output_tokens": 77, "top_p": 0.9,
                                  "stop_sequences": ["###"], "seed": 5, "top_k": 7}
        anthropic = spec("anthropic")
    assert anthropic["max_tokens"] == 77 and anthropic["stop_sequences"] == ["END"]  # the section wins
    assert "seed" not in anthropic and "seed dropped" in caplog.text
    # a reasoning model takes max_completion_tokens at api.openai.com
    reasoning = resolve_spec(args(service_llm_provider="openai", service_llm_api_key="k", service_model_name="o3",
                                  service_llm_gen_config_path=str(gen))).gen_config
    assert reasoning["max_completion_tokens"] == 77 and "max_tokens" not in reasoning


def test_gen_config_errors(tmp_path):
    gen = tmp_path / "gen.yaml"
    gen.write_text("max_tokens: 10\nmax_output_tokens: 20\n")
    with pytest.raises(UsageError, match="'max_tokens' and 'max_output_tokens' both set"):
        resolve_spec(args(service_llm_provider="openai", service_llm_api_key="k", service_llm_gen_config_path=str(gen)))
    gen.write_text("max_tokens: 10\ntop_kk: 3\n")  # a typo is still refused by the SDK check
    with pytest.raises(UsageError, match=r"unknown key\(s\) \['top_kk'\]"):
        resolve_spec(args(service_llm_provider="openai", service_llm_api_key="k", service_llm_gen_config_path=str(gen)))
    gen.write_text("gemini: [1, 2]\n")
    with pytest.raises(UsageError, match="section 'gemini' must be a mapping"):
        resolve_spec(args(service_llm_provider="gemini", service_llm_api_key="k", service_llm_gen_config_path=str(gen)))


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_the_neutral_settings_reach_the_wire(provider, tmp_path):
    """Through the real SDK to the protocol server: the request carries the provider's names."""
    gen = tmp_path / "gen.yaml"
    gen.write_text("temperature: 0.2\nmax_tokens: 55\nstop: ['###']\n")
    with ProtocolServer() as server:
        llm = ServiceLLM.from_args(args(service_llm_provider=provider, service_llm_api_key="k", service_model_name="m",
                                        service_llm_base_url=server.base_url(provider), rate_limit_per_minute=0,
                                        service_llm_gen_config_path=str(gen)), workers=1, show_progress=False)
        assert llm.run([Job("say hi")], parse=lambda t: t)[0].ok
        (sent_provider, body), = server.bodies
    assert sent_provider == provider
    if provider == "gemini":
        cfg = body["generationConfig"]
        assert (cfg["maxOutputTokens"], cfg["stopSequences"], cfg["temperature"]) == (55, ["###"], 0.2)
    elif provider == "anthropic":
        assert (body["max_tokens"], body["stop_sequences"]) == (55, ["###"])
    else:
        assert (body["max_tokens"], body["stop"], body["temperature"]) == (55, ["###"], 0.2)


# ------------------------------------------------------------------------ environment variables


def test_provider_env_keys_are_read_and_ours_win(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    assert resolve_spec(args(service_llm_provider="openai")).api_key == "sk-openai"
    monkeypatch.setenv("SERVICE_LLM_API_KEY", "ours")
    assert resolve_spec(args(service_llm_provider="openai")).api_key == "ours"
    assert resolve_spec(args(service_llm_provider="openai", service_llm_api_key="cfg")).api_key == "cfg"
    monkeypatch.delenv("SERVICE_LLM_API_KEY")
    monkeypatch.setenv("GEMINI_API_KEY", "g1")
    assert resolve_spec(args(service_llm_provider="gemini")).api_key == "g1"
    monkeypatch.setenv("GOOGLE_API_KEY", "g2")  # google-genai prefers GOOGLE_API_KEY
    assert resolve_spec(args(service_llm_provider="gemini")).api_key == "g2"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "a1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9/")
    spec = resolve_spec(args(service_llm_provider="anthropic"))
    assert (spec.api_key, spec.base_url) == ("a1", "http://127.0.0.1:9")


def test_openai_base_url_from_env_allows_a_keyless_server(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:8000/v1")
    spec = resolve_spec(args(service_llm_provider="openai"))
    assert (spec.base_url, spec.api_key) == ("http://localhost:8000/v1", None)


def test_cloud_settings_from_the_sdks_variables(monkeypatch, tmp_path):
    cloud_env(monkeypatch, tmp_path)
    spec = resolve_spec(args(service_llm_provider="gemini-vertex"))
    assert (spec.gcp_project_id, spec.gcp_location) == ("p", "us-east5")
    monkeypatch.setenv("CLOUD_ML_REGION", "europe-west1")  # anthropic-vertex's own, before GOOGLE_CLOUD_LOCATION
    assert resolve_spec(args(service_llm_provider="anthropic-vertex")).gcp_location == "europe-west1"
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "br")
    assert resolve_spec(args(service_llm_provider="anthropic-bedrock")).aws_location == "us-east-1"


def test_missing_key_error_lists_the_variables_looked_at():
    with pytest.raises(UsageError) as err:
        resolve_spec(args(service_llm_provider="gemini"))
    assert "service_llm_api_key, SERVICE_LLM_API_KEY, GOOGLE_API_KEY, GEMINI_API_KEY" in str(err.value)


def test_print_config_and_log_name_the_variable_never_the_value(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-SECRET-VALUE-123")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    cfg = tmp_path / "e.yaml"
    cfg.write_text("service_llm_provider: openai\nlm_response_ds_id: x\n")
    proc = run_stage("evaluation", ["--from-config", str(cfg), "--print-config"], cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "# service_llm_api_key: from env OPENAI_API_KEY (value not shown)" in proc.stdout
    assert "# service_llm_base_url: from env OPENAI_BASE_URL" in proc.stdout
    assert "SECRET" not in proc.stdout + proc.stderr
    # the run's log says the same, before failing on the missing input (exit 2, no paid call)
    run = run_stage("evaluation", ["--from-config", str(cfg)], cwd=REPO)
    assert "from env OPENAI_API_KEY" in run.stderr and "SECRET" not in run.stdout + run.stderr
