"""The provider registry (src/llamaduo/service_llm/providers/): the shipped providers, what
each declares, and a provider written in THIS file alone (no other module edited) that runs
end to end through evaluation.py against an in-test HTTP server with its own wire protocol."""
from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional, Sequence

import pytest

from llamaduo.errors import EXIT_OK, UsageError
from llamaduo.judging.contract import JUDGE_SCHEMA
from llamaduo.service_llm import Job, ServiceLLM, ServiceLLMArgs, providers
from llamaduo.service_llm.pricing import Pricing
from llamaduo.service_llm.providers.base import (
    NEUTRAL_GEN_NAMES,
    RawCompletion,
    ServiceProvider,
    network_error,
    status_error,
)
from llamaduo.service_llm.records import ResponseSchema, TransientError
from tests.servers.protocol_server import judge_reply_json, judge_scores

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {"openai", "anthropic", "anthropic-vertex", "anthropic-bedrock", "gemini", "gemini-vertex", "local"}
TOY_KEY = "toy-SECRET-KEY-must-never-be-written-7777"


# ============================================================================ the shipped providers
def test_the_registry_lists_exactly_the_shipped_providers():
    assert set(providers.names()) == SHIPPED
    from llamaduo.service_llm import PROVIDERS

    assert set(PROVIDERS) == SHIPPED  # args.py's list (CLI help) is the registry's


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_provider_declares_everything(name):
    cls = providers.get(name)
    assert providers.missing_attributes(cls) == []
    assert cls.__module__.startswith("llamaduo.service_llm.providers.") and cls.name == name
    assert isinstance(cls.default_model, str) and cls.default_model
    assert isinstance(cls.family, str) and cls.family in providers.families()
    for attr in ("key_env", "base_url_env", "project_env", "location_env", "region_env", "secret_env",
                 "noisy_loggers"):
        value = getattr(cls, attr)
        assert isinstance(value, tuple) and all(isinstance(v, str) and v for v in value), attr
    assert set(cls.gen_names) == set(NEUTRAL_GEN_NAMES)
    allowed = cls.allowed_gen_keys()
    assert allowed is None or {n for n in cls.gen_names.values() if n} & allowed
    wire = cls.structured_kwargs(JUDGE_SCHEMA)
    assert wire is None or (isinstance(wire, dict) and wire)
    assert (cls.project_env == ()) == (cls.location_env == ())  # a GCP provider needs both
    assert bool(cls.default_url) != cls.free  # a hosted provider says where it is (the loop check probes it)
    if not cls.free:  # a hosted provider's default model has a price
        assert Pricing.load(REPO / "src/llamaduo/defaults/pricing.yaml").price(cls.default_model) is not None


def test_registry_refuses_incomplete_or_clashing_classes():
    class NoModel(ServiceProvider):
        name = "half-done"
        family = "half"

    with pytest.raises(TypeError, match="default_model"):
        providers.register(NoModel)

    class Clash(ServiceProvider):
        name, default_model, family = "openai", "x", "openai"

    with pytest.raises(ValueError, match="taken"):
        providers.register(Clash)
    with pytest.raises(UsageError, match="unknown service_llm_provider 'half-done'"):
        providers.get("half-done")


def test_discovery_imports_no_sdk_and_no_torch():
    """setup_logging() asks the registry for noisy loggers: finding the providers must stay cheap."""
    code = ("import sys; from llamaduo.logging_setup import setup_logging; setup_logging(); "
            "from llamaduo.service_llm import providers; providers.names(); "
            "print(sorted({'openai', 'anthropic', 'google.genai', 'torch', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_client_has_no_test_seams():
    source = (REPO / "src/llamaduo/service_llm/client.py").read_text()
    assert "pacer_log" not in source and "for tests" not in source and "tests shorten" not in source
    assert not (REPO / "src/llamaduo/generation.py").exists()


# ============================================================================ a new provider, in this file only
class ToyServer:
    """An HTTP API nobody ships an adapter for: POST /v1/generate {"model", "chat", "seed",
    "max_tokens"} -> {"output", "usage": {"in", "out"}, "stop"}. Judge prompts get the
    protocol server's deterministic scores; a prompt containing [[toy-429]] is refused once
    with 429 + Retry-After: 0 (so a retry must follow); the bearer key must be TOY_KEY."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.refused: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, obj: dict, headers: Optional[dict] = None) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                             **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.headers.get("Authorization") != f"Bearer {TOY_KEY}":
                    return self._send(401, {"error": "bad key"})
                if self.path != "/v1/generate":
                    return self._send(404, {"error": self.path})
                prompt = body["chat"][0]["content"]
                if "[[toy-429]]" in prompt and prompt not in server.refused:
                    server.refused.add(prompt)
                    return self._send(429, {"error": "slow down"}, {"Retry-After": "0"})
                server.requests.append(body)
                cand = re.search(r"<candidate_answer>\s*(.*?)\s*</candidate_answer>", prompt, re.S)
                text = judge_reply_json(*judge_scores(cand.group(1))) if cand else f"toy: {prompt[:40]}"
                self._send(200, {"output": text, "usage": {"in": len(prompt) // 4, "out": len(text) // 4},
                                 "stop": "eos"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "ToyServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ToyProvider(ServiceProvider):
    """The whole provider: what it needs, how its settings are spelled, and the call."""

    name = "toy-llm"
    default_model = "toy-1"
    family = "toy"  # a `toy:` section of a gen file is this provider's
    key_env = ("TOY_API_KEY",)  # read after SERVICE_LLM_API_KEY; masked in logs and cards
    base_url_env = ("TOY_BASE_URL",)
    gen_names = {"max_tokens": "max_tokens", "stop": None, "seed": "seed", "temperature": None, "top_p": None}
    gen_defaults = {"max_tokens": 256}
    default_gen_config = None
    noisy_loggers = ("toy_sdk",)

    @classmethod
    def allowed_gen_keys(cls) -> Optional[set[str]]:
        return {"max_tokens", "seed"}

    def _post(self, body: dict) -> tuple[int, dict, dict]:
        """One blocking HTTP call (stdlib only; run in a thread): (status, headers, JSON)."""
        req = urllib.request.Request(f"{self.spec.base_url}/v1/generate", data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {self.spec.api_key}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.spec.timeout_s) as resp:
                return resp.status, dict(resp.headers), json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), {"error": err.read().decode(errors="replace")}

    async def complete(self, messages: Sequence[dict], sample_index: int,
                       schema: Optional[ResponseSchema] = None) -> RawCompletion:
        gen = dict(self.spec.gen_config)
        body = {"model": self.spec.model, "chat": list(messages), **gen,
                "seed": int(gen.get("seed", 0)) + sample_index}
        start = time.monotonic()
        try:
            status, headers, data = await asyncio.to_thread(self._post, body)
        except OSError as err:  # refused, DNS, timeout, dropped
            raise network_error(err) or TransientError(f"{type(err).__name__}: {err}") from None
        if status != 200:
            raise status_error(status, str(data.get("error")), {k.lower(): v for k, v in headers.items()})
        return RawCompletion(data["output"], data["usage"]["in"], data["usage"]["out"], self.spec.model,
                             data["stop"], time.monotonic() - start)


@pytest.fixture()
def toy(monkeypatch):
    providers.register(ToyProvider)
    monkeypatch.setenv("TOY_API_KEY", TOY_KEY)
    with ToyServer() as server:
        monkeypatch.setenv("TOY_BASE_URL", server.url)
        yield server
    providers.unregister(ToyProvider.name)


def test_a_new_provider_needs_no_other_module(toy, repo_root, tmp_path, caplog):
    # nothing outside this file names it
    for path in [*(repo_root / "src").rglob("*.py"), *(repo_root / "src").rglob("*.yaml")]:
        assert "toy-llm" not in path.read_text(), path
    assert "toy-llm" in providers.names() and "toy" in providers.families()

    # the evaluation stage, unchanged, judges with it (key and URL from the provider's env vars)
    from llamaduo.pipeline.evaluation import main

    cands = ["def add(a, b): return a + b", "print('hello') [[toy-429]]", "lambda x: x * 2"]
    data = tmp_path / "resp.jsonl"
    data.write_text("".join(json.dumps({"instructions": f"Write function {i}.", "target_responses": "ref",
                                        "candidate_responses": c}) + "\n" for i, c in enumerate(cands)))
    pricing = tmp_path / "pricing.yaml"  # the provider's pricing entry (models: {toy-1: ...})
    pricing.write_text("models:\n  toy-1: {input: 1.0, output: 2.0}\n")
    gen = tmp_path / "gen.yaml"  # the neutral file: max_tokens maps, temperature is dropped, toy: extras
    gen.write_text("temperature: 0.3\nmax_tokens: 64\ntoy:\n  seed: 5\nopenai: {frequency_penalty: 0.1}\n")
    out = tmp_path / "eval"
    caplog.set_level(logging.INFO)
    code = main(["--service_llm_provider", "toy-llm", "--eval_repeat", "2", "--eval_workers", "3",
                 "--rate_limit_per_minute", "0", "--service_llm_gen_config_path", str(gen),
                 "--prompt_tmpl_path", str(repo_root / "src/llamaduo/defaults/prompts.toml"),
                 "--pricing_path", str(pricing), "--ledger_path", str(tmp_path / "ledger.sqlite"),
                 "--lm_response_ds_id", str(data), "--eval_ds_id", str(out),
                 "--avg_similarity_threshold", "0", "--avg_precision_threshold", "0"])
    assert code == EXIT_OK
    summary = json.loads((out / "summary.json").read_text())
    expected = [judge_scores(c) for c in cands]
    assert summary["mean_similarity"] == pytest.approx(sum(e[0] for e in expected) / 3, abs=1e-4)
    assert summary["failures"] == 0 and summary["judgements"] == 6
    assert summary["cost_usd"] == pytest.approx(
        (summary["tokens"]["input"] * 1.0 + summary["tokens"]["output"] * 2.0) / 1e6, abs=1e-6)
    assert len(toy.requests) == 6 and toy.refused  # the 429 was retried, not failed
    assert {(r["max_tokens"], r["seed"]) for r in toy.requests} == {(64, 5), (64, 6)}  # seed + sample index
    assert not any("temperature" in r or "frequency_penalty" in r for r in toy.requests)
    assert logging.getLogger("toy_sdk").level == logging.WARNING  # its noisy logger was quieted
    written = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file()
                      and p.suffix in (".json", ".md", ".jsonl"))
    assert TOY_KEY not in written and TOY_KEY not in caplog.text

    # ...and the masking function knows its key variable
    from llamaduo.redact import redact

    assert redact(f"key is {TOY_KEY}") == "key is ***"


def test_a_new_provider_fails_fast_like_the_shipped_ones(toy, monkeypatch, tmp_path):
    monkeypatch.delenv("TOY_API_KEY")
    monkeypatch.delenv("SERVICE_LLM_API_KEY", raising=False)
    with pytest.raises(UsageError, match="toy-llm needs an API key; looked at service_llm_api_key, "
                                         "SERVICE_LLM_API_KEY, TOY_API_KEY"):
        ServiceLLM.from_args(ServiceLLMArgs(service_llm_provider="toy-llm", no_cache=True), workers=1)
    gen = tmp_path / "gen.yaml"
    gen.write_text("toy: {top_kk: 3}\n")
    with pytest.raises(UsageError, match=r"unknown key\(s\) \['top_kk'\] for provider toy-llm"):
        ServiceLLM.from_args(ServiceLLMArgs(service_llm_provider="toy-llm", service_llm_api_key="k", no_cache=True,
                                            service_llm_gen_config_path=str(gen)), workers=1)


# ============================================================================ local: the inference backend
def test_local_provider_samples_each_row_with_its_own_seed(tiny_model_dir, tmp_path):
    """The local provider generates through llamaduo.inference.hf_backend: a row's sample
    depends on (seed, conversation, sample index), not on the rows batched with it."""
    cfg = tmp_path / "local.yaml"
    cfg.write_text("max_new_tokens: 8\ndo_sample: true\ntemperature: 1.0\nseed: 3\n")
    args = ServiceLLMArgs(service_llm_provider="local", service_model_name=str(tiny_model_dir), no_cache=True,
                          rate_limit_per_minute=0, service_llm_gen_config_path=str(cfg))
    llm = ServiceLLM.from_args(args, workers=4, show_progress=False)
    assert llm.spec.gen_config["seed"] == 3 and llm.pricing.price(llm.model) == (0.0, 0.0)
    together = llm.run([Job("Say hi."), Job("Name a colour."), Job("Say hi.", sample_index=1)], parse=lambda t: t)
    alone = llm.run([Job("Name a colour.")], parse=lambda t: t)
    assert all(r.ok for r in together)
    assert alone[0].value == together[1].value
    assert together[0].completions[0].finish_reason in ("stop", "length")
