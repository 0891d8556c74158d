"""The openai backend: the test prompts go to any OpenAI-compatible server (vLLM, SGLang, TGI,
llama.cpp, Ollama) instead of a model loaded in this process.

Requests go through `llamaduo.service_llm`, which already paces, bounds concurrency, retries
and writes every reply to a SQLite ledger first (a rerun sends 0 repeated requests). This
module adds what serving needs: the `model` to ask for (a LoRA adapter's served name), a check
that every server serves it, several base URLs, and the sampling settings as request fields.
Keys and behaviour: docs/batch_inference.md.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from llamaduo.errors import RunFailed, UsageError
from llamaduo.inference.generation import END_OF_TURN_TOKENS, Generated, GenSettings
from llamaduo.inference.model_ref import ADAPTER_CONFIG
from llamaduo.inference.prompts import PromptRecord, WorkItem
from llamaduo.inference.served_name import ServedTarget, served_target  # noqa: F401 - re-exported
from llamaduo.service_llm import Job, JobResult, ServiceLLM
from llamaduo.service_llm.pricing import Pricing
from llamaduo.service_llm.providers import Provider, ProviderSpec, RawCompletion
from llamaduo.service_llm.providers.openai import OpenAIProvider
from llamaduo.service_llm.records import ResponseSchema

logger = logging.getLogger("llamaduo.inference")

# The OpenAI API accepts at most 4 stop strings; these are the hf backend's end-of-turn markers
# that are not also common eos tokens (the server stops at the model's eos on its own).
STOP_STRINGS = tuple(END_OF_TURN_TOKENS[:4])
_API_KEY_ENVS = ("OPENAI_API_KEY", "SERVICE_LLM_API_KEY")


def parse_base_urls(text: Optional[str]) -> tuple[str, ...]:
    """One or more http(s) base URLs, separated by commas or whitespace (exit 2 otherwise)."""
    urls = tuple(u.rstrip("/") for u in re.split(r"[,\s]+", text or "") if u)
    if not urls:
        raise UsageError("backend 'openai' needs openai_base_url, e.g. http://localhost:8000/v1 "
                         "(several, comma-separated, spread the requests)")
    for url in urls:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UsageError(f"openai_base_url: '{url}' is not an http(s) URL")
    if len(set(urls)) != len(urls):
        raise UsageError(f"openai_base_url lists the same URL twice: {', '.join(urls)}")
    return urls


def model_sha_of(target: ServedTarget, adapter_sha: Optional[str]) -> str:
    """`model_sha` for served answers: the served model id, the adapter name and its content hash."""
    if target.lora_name is None:
        return f"served:{target.request_model}"
    base = target.base_model or "?"
    return f"served:{base}+lora:{target.lora_name}" + (f"@{adapter_sha}" if adapter_sha else "")


# ---------------------------------------------------------------------------- server checks
def _http_json(url: str, api_key: Optional[str], body: Optional[dict] = None, timeout: float = 30.0) -> object:
    """GET (or POST `body`) a JSON endpoint. Plain urllib: two admin calls need no SDK."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode("utf-8", "replace")


def served_models(base_url: str, api_key: Optional[str]) -> Optional[list[dict]]:
    """The server's model list (GET /models), or None when it has no such endpoint."""
    try:
        listing = _http_json(f"{base_url}/models", api_key)
    except urllib.error.HTTPError as err:
        if err.code in (404, 405, 501):
            return None
        raise RunFailed(f"{base_url}/models answered HTTP {err.code}") from None
    except (urllib.error.URLError, OSError) as err:
        raise RunFailed(f"cannot reach the server at {base_url}: {getattr(err, 'reason', err)}") from None
    data = listing.get("data") if isinstance(listing, dict) else None
    return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else None


def check_servers(urls: Sequence[str], target: ServedTarget, api_key: Optional[str],
                  load_lora: bool) -> ServedTarget:
    """Every server must serve `target.request_model`; returns the target with its base model
    filled in from the listing (vLLM lists an adapter with its `parent`)."""
    for url in urls:
        models = served_models(url, api_key)
        if models is None:
            logger.warning("%s has no /models endpoint; cannot check that it serves '%s'", url, target.request_model)
            continue
        entry = next((m for m in models if m.get("id") == target.request_model), None)
        if entry is None and target.lora_name and load_lora:
            _load_adapter(url, target, api_key)
            entry = next((m for m in served_models(url, api_key) or [] if m.get("id") == target.request_model), {})
        if entry is None:
            ids = ", ".join(str(m.get("id")) for m in models) or "(none)"
            hint = (f"; start it with `vllm serve <base> --enable-lora --lora-modules "
                    f"{target.lora_name}={target.lora_path}` or set load_lora_at_runtime"
                    if target.lora_name else "")
            raise UsageError(f"{url} does not serve '{target.request_model}' (it serves: {ids}){hint}")
        if target.lora_name and entry.get("parent") and not target.base_model:
            target = replace(target, base_model=str(entry["parent"]))
    return target


def _load_adapter(url: str, target: ServedTarget, api_key: Optional[str]) -> None:
    """vLLM's runtime adapter loading (server started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)."""
    root = url[:-3] if url.endswith("/v1") else url
    try:
        _http_json(f"{root}/v1/load_lora_adapter", api_key,
                   {"lora_name": target.lora_name, "lora_path": target.lora_path}, timeout=600)
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")[:200]
        raise UsageError(f"{url} refused to load adapter '{target.lora_name}' from {target.lora_path} "
                         f"(HTTP {err.code}: {detail}); vLLM needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True "
                         "and --enable-lora") from None
    logger.info("loaded adapter '%s' (%s) on %s", target.lora_name, target.lora_path, url)


# ---------------------------------------------------------------------------- spreading
class SpreadProvider:
    """One OpenAIProvider per base URL; each request goes to the least-loaded one (fewest in
    flight, ties in turn) or, with `round_robin`, strictly in turn. A retry is a new request,
    so it may land on another server."""

    def __init__(self, spec: ProviderSpec, urls: Sequence[str], mode: str) -> None:
        self.urls = list(urls)
        self.providers = [OpenAIProvider(replace(spec, base_url=u)) for u in self.urls]
        self.mode = mode
        self.in_flight = [0] * len(self.urls)
        self.sent = [0] * len(self.urls)
        self._turn = itertools.cycle(range(len(self.urls)))

    def _pick(self) -> int:
        start = next(self._turn)
        if self.mode == "round_robin":
            return start
        order = [(start + k) % len(self.urls) for k in range(len(self.urls))]
        return min(order, key=lambda i: self.in_flight[i])

    async def complete(self, messages: Sequence[dict], sample_index: int,
                       schema: Optional[ResponseSchema] = None) -> RawCompletion:
        i = self._pick()
        self.in_flight[i] += 1
        self.sent[i] += 1
        try:
            return await self.providers[i].complete(messages, sample_index, schema)
        finally:
            self.in_flight[i] -= 1

    async def aclose(self) -> None:
        await asyncio.gather(*(p.aclose() for p in self.providers))


class SpreadServiceLLM(ServiceLLM):
    """A ServiceLLM whose requests are spread over several base URLs."""

    def __init__(self, spec: ProviderSpec, urls: Sequence[str], mode: str, **kwargs) -> None:
        super().__init__(spec, **kwargs)
        self.urls = list(urls)
        self.mode = mode
        self.requests_by_url: dict[str, int] = {u: 0 for u in self.urls}

    def _new_provider(self) -> Provider:
        return _CountingSpread(self)


class _CountingSpread(SpreadProvider):
    """Adds each run's per-URL request counts to the owning client when it closes."""

    def __init__(self, owner: SpreadServiceLLM) -> None:
        super().__init__(owner.spec, owner.urls, owner.mode)
        self.owner = owner

    async def aclose(self) -> None:
        for url, n in zip(self.urls, self.sent):
            self.owner.requests_by_url[url] += n
        await super().aclose()


# ---------------------------------------------------------------------------- generation
@dataclass(frozen=True)
class OpenAISettings:
    """The backend's keys, as batch_inference.py's config gives them."""

    urls: tuple[str, ...]
    target: ServedTarget
    workers: int
    rate_limit_per_minute: int
    max_retries: int
    request_timeout_s: float
    spread: str
    ledger_path: Path


def api_key() -> Optional[str]:
    """A key for servers started with one (vLLM --api-key); read from the environment only."""
    return next((os.environ[e] for e in _API_KEY_ENVS if os.environ.get(e)), None)


def request_fields(settings: GenSettings) -> dict:
    """The hf backend's decoding settings as Chat Completions fields (seed is per sample)."""
    sampling = settings.sampling
    return {"temperature": settings.temperature if sampling else 0.0,
            "top_p": settings.top_p if sampling else 1.0,
            "max_tokens": settings.max_new_tokens, "seed": 0, "stop": list(STOP_STRINGS)}


def make_client(opts: OpenAISettings, settings: GenSettings) -> SpreadServiceLLM:
    spec = ProviderSpec(provider="openai", model=opts.target.request_model, gen_config=request_fields(settings),
                        base_url=opts.urls[0], timeout_s=opts.request_timeout_s,
                        max_output_tokens=settings.max_new_tokens, api_key=api_key())
    return SpreadServiceLLM(spec, opts.urls, opts.spread, workers=opts.workers,
                            rate_limit_per_minute=opts.rate_limit_per_minute, tokens_per_minute=0,
                            max_retries=opts.max_retries, max_reasks=0, ledger_path=opts.ledger_path,
                            refresh_cache=False, max_cost_usd=None, pricing=Pricing.free())


def generate_all(client: SpreadServiceLLM, records: Sequence[PromptRecord], items: Sequence[WorkItem],
                 on_done: Optional[Callable[[WorkItem, Generated], None]] = None) -> dict[tuple[int, int], Generated]:
    """Every work item's answer, keyed by (row_index, repeat_index).

    The request seed is the item's own seed (the same one the hf backend samples with): it is
    sent as `sample_index`, which the provider adds to the config's seed 0 and which keys the
    ledger. Raises RunFailed when any request still fails after its retries; the answers
    that did come back are in the ledger, so a rerun asks only for the rest.
    """
    chats = {r.row_index: r.chat for r in records}
    jobs = [Job(chats[it.row_index][-1]["content"], sample_index=it.seed, messages=chats[it.row_index])
            for it in items]

    def finished(i: int, res: JobResult) -> None:
        if res.ok and on_done is not None:
            on_done(items[i], _generated(res))

    results = client.run(jobs, parse=str, desc="generating (openai)", on_result=finished)
    failed = [(it, r) for it, r in zip(items, results) if not r.ok]
    if failed:
        it, res = failed[0]
        raise RunFailed(f"{len(failed)} of {len(items)} requests failed (first: row {it.row_index}, "
                        f"repeat {it.repeat_index}: {res.error}); rerun to resume, finished answers are kept")
    return {it.key: _generated(r) for it, r in zip(items, results)}


def _generated(res: JobResult) -> Generated:
    """The answer with the server's finish_reason ("length" = cut at max_tokens). A server
    that sends none gets "" here; batch_inference then infers it from the token count."""
    last = res.completions[-1]
    return Generated(last.text.strip(), last.output_tokens, last.finish_reason or "")
