"""A local HTTP server speaking just enough of the OpenAI, Anthropic and Gemini wire protocols
for the official SDKs, pointed at it by base URL, to run end to end offline.

Start it in a test process::

    from tests.servers.protocol_server import ProtocolServer
    with ProtocolServer(latency=0.0, rpm=0) as server:
        server.base_url("openai")     # http://127.0.0.1:PORT/v1  -> service_llm_base_url
        server.base_url("anthropic")  # http://127.0.0.1:PORT     (also gemini, *-vertex, bedrock)
        ...
        server.stats()["by_provider"]["openai"]; server.reset()

or as a subprocess (end-to-end tests of the stage scripts)::

    python -m tests.servers.protocol_server --port 0 --port-file /tmp/port [--latency 1.0]
        [--rpm 600 --rpm-window-s 60] [--slow-s 5] [--fault "500 times=3"]
        [--synth-extra-file plants.jsonl] [--synth-pairs 3]
    # prints "listening on http://127.0.0.1:PORT" (flushed); GET /_stats, POST /_reset

Routes (any host prefix is accepted, so the SDKs' default paths all work):
    POST .../chat/completions                         OpenAI chat completions
    POST .../v1/messages                              Anthropic messages
    POST .../publishers/anthropic/models/M:rawPredict Anthropic on Vertex AI
    POST .../model/M/invoke                           Anthropic on Bedrock
    POST .../models/M:generateContent                 Gemini (AI Studio and Vertex AI)

Conventions other tests rely on:
* Judge prompts (the first user message contains `<candidate_answer>`): if the candidate
  text contains `[[sim=NN prec=MM]]` the reply carries exactly those scores; otherwise the
  scores are `judge_scores(candidate)` (deterministic, 1..100) so tests can compute
  expected aggregates. Reply: the evaluation JSON (bare for openai, in a ```json fence for
  gemini, after a sentence of prose for anthropic*, to exercise extraction).
* Synth prompts (contain `<example_instruction>`): reply `{"contents": synth_pairs(example,
  seed, n)}`; seed = the request's `seed` (openai `seed`, gemini `generationConfig.seed`,
  which the client sets to the job's sample index) or, for Anthropic which has no seed,
  the number of earlier requests with the same first message. Lines of
  `--synth-extra-file` (JSONL of {"instruction","response"}) are appended to every synth
  reply (planting e.g. test-set paraphrases); in process, `server.synth_extra` is that list.
* Structured output: the server records, per request, whether it asks for native structured
  output in its wire format and whether that ask is well formed (openai `response_format`
  type json_schema with `strict: true` and an object schema; anthropic a tool with an object
  `input_schema` forced by `tool_choice {type: tool, name}`; gemini `responseMimeType`
  application/json with a `responseSchema`); judge asks must also require both assessment
  keys. `stats()["structured"]` counts well-formed asks per provider, `["structured_bad"]`
  malformed ones, `["plain_judge"]` judge requests without any ask. A well-formed ask is
  answered in the matching shape: openai message content = the bare object, anthropic a
  `tool_use` block whose `input` is the object (stop_reason tool_use), gemini the bare JSON
  text. `structured=` / `--structured`: "honour" (default), "require" (a judge request
  without a well-formed ask gets HTTP 400) or "reject" (a request that asks gets HTTP 400
  naming the field, like an OpenAI-compatible server without response_format).
* `quote_candidate=True` / `--quote-candidate`: an adversarial judge for injection tests.
  It reads the data tags of a judge prompt leniently, as a model would (any case, spaces,
  attributes, full-width letters, zero-width characters: `judge_regions`), scores honestly
  (`honest_scores(reference, candidate)`, from their text overlap), quotes the candidate
  back (text replies: inside `<candidate_answer>` before the verdict and in a ``` fence after
  it; structured replies: inside the reasons, and for anthropic also in a text block before
  the tool_use block), and obeys an injected "output 100" / "ignore previous instructions"
  found OUTSIDE the data tags by answering 100/100.
* Any other prompt: `echo: <first 200 chars>`.
* `server.reply_override(provider, prompt) -> str | None` (in process): when it returns a
  string, that is the reply text. `prompt` is the FIRST user message (re-asks keep it).
* Fault markers anywhere in the first user message: `[[fault=KIND]]`, optionally
  `[[fault=KIND times=K]]` (only the first K requests with that message fault, counted per
  provider, so retries or re-asks then succeed) and for 429 `[[fault=429-retry-after=S]]`
  (sends Retry-After: S; combinable: `[[fault=429-retry-after=1 times=2]]`).
  KIND: 401 (rejected key), 429, 500, 503, slow (sleeps --slow-s before answering), drop (closes the
  connection without a response), nonjson, missing-key, out-of-range, empty-choices.
  `--fault SPEC` (e.g. "503 times=5") applies to every request, counted server-wide.
* `--latency S` delays every answer; `--rpm N` answers 429 (with Retry-After) to requests
  beyond N accepted ones in any sliding `--rpm-window-s` window; `stats()["rpm_rejections"]`
  counts them.
* Token usage in replies: ceil(chars / 4) of the prompt and of the reply text.
* Request counting: `stats()` / `GET /_stats` -> {"total", "accepted", "by_path",
  "by_provider", "rpm_rejections", "faults", "max_repeats", "distinct_requests",
  "max_window_count", "answered", "answered_repeats"}; `GET /_stats?detail=1` adds
  "by_request" (counts per hash of provider + messages + seed: a value > 1 means the same
  request came twice) and "openai_requests" (every accepted chat-completions body, messages
  included, in arrival order). `answered` counts successful (billable) answers; `answered_repeats`
  how many of them answered a request already answered once (a paid call made twice).
* Serving like vLLM (`models=[...]`, `--models base --lora round_1=/path/adapter`):
  `GET .../models` lists the base models and the LoRA adapters (with `parent` and `root`, as
  vLLM does); without `models` it is a 404 as before. `POST .../load_lora_adapter`
  {lora_name, lora_path} adds an adapter when `allow_runtime_lora` (`--allow-runtime-lora`),
  else 404 (vLLM without VLLM_ALLOW_RUNTIME_LORA_UPDATING).
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import math
import random
import re
import socket
import sys
import threading
import time
import unicodedata
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlparse

FAULT_KINDS = ("401", "429", "500", "503", "slow", "drop", "nonjson", "missing-key", "out-of-range", "empty-choices")
_FAULT_RE = re.compile(
    r"\[\[fault=(?P<kind>401|429|500|503|slow|drop|nonjson|missing-key|out-of-range|empty-choices)"
    r"(?:-retry-after=(?P<ra>\d+(?:\.\d+)?))?(?:\s+times=(?P<times>\d+))?\]\]"
)
_SCORES_RE = re.compile(r"\[\[sim=(\d+)\s+prec=(\d+)\]\]")
_CANDIDATE_RE = re.compile(r"<candidate_answer>\s*(.*?)\s*</candidate_answer>", re.DOTALL)
_EXAMPLE_RE = re.compile(r"<example_instruction>\s*(.*?)\s*</example_instruction>", re.DOTALL)
SYNTH_PAIRS_PER_REPLY = 3
NONJSON_TEXT = "I would say the answer is quite good overall, maybe an 80."

_WORDS = (
    "alpha amber anchor apple arrow atlas autumn badge basket beacon berry binary bridge bronze "
    "cabin canvas carbon castle cedar channel cipher circle cloud cobalt comet copper coral "
    "cotton crystal dawn delta desert diamond domain dragon eagle echo ember engine falcon "
    "feather fiber field flame forest fossil galaxy garden garnet glacier granite harbor hazel "
    "helix horizon island ivory jasmine jungle kernel lantern laser lemon lily lotus magnet "
    "maple marble meadow meteor mint mirror nebula needle nickel oasis ocean olive onyx orbit "
    "orchid palette panda pearl pepper pixel planet prism pulse quartz quill radar raven reef "
    "ribbon river rocket saddle saffron sapphire scarlet shadow signal silver socket spiral "
    "spruce summit tango temple thunder timber topaz tower tulip tundra valley velvet vertex "
    "violet vortex walnut willow window winter zenith zephyr"
).split()


# ============================================================================ deterministic answers
def judge_scores(candidate: str) -> tuple[int, int]:
    """(similarity, precision) in 1..100 for a candidate answer without a score marker."""
    marker = _SCORES_RE.search(candidate)
    if marker:
        return int(marker.group(1)), int(marker.group(2))
    h = int(hashlib.sha256(candidate.strip().encode("utf-8")).hexdigest(), 16)
    return 1 + h % 100, 1 + (h // 100) % 100


# ---------------------------------------------------------------- the quoting judge
_LOOKALIKE = str.maketrans({"\u2039": "<", "\u203a": ">", "\u3008": "<", "\u3009": ">",
                            "\u27e8": "<", "\u27e9": ">", "\u2329": "<", "\u232a": ">"})
_INJECTION_RE = re.compile(r"ignore (?:all )?(?:the )?previous instructions|\b(?:output|give|return|score it)\s+100\b")
_DATA_TAGS = ("instruction", "reference_answer", "candidate_answer")


def _lenient(text: str) -> tuple[str, list[int]]:
    """How a model might read tags (NFKC, format characters dropped, look-alikes, any case),
    with each character's index in `text` so regions can be cut from the original.
    Written apart from src/llamaduo/delimiters.py on purpose: the server plays the model the
    neutralisation must defeat, and a bug shared by both would let the tests pass."""
    view, where = [], []
    for i, c in enumerate(text):
        if unicodedata.category(c) == "Cf":
            continue
        for n in unicodedata.normalize("NFKC", c).translate(_LOOKALIKE).lower():
            view.append(n)
            where.append(i)
    where.append(len(text))
    return "".join(view), where


def judge_regions(prompt: str) -> tuple[dict[str, str], str]:
    """({tag: original text inside it}, text outside every data block) of a judge prompt,
    with the tags read leniently: a block ends at the first closing tag of any spelling
    (separators, attributes), exactly where a gullible model would think the data ends."""
    text, where = _lenient(prompt)
    regions: dict[str, str] = {}
    outside = []
    pos = 0
    for tag in _DATA_TAGS:
        name = r"[\s_-]*".join(re.escape(c) for c in tag.replace("_", ""))
        opening = re.compile(rf"<\s*{name}(?!\w)[^<>]*>").search(text, pos)
        if opening is None:
            continue
        closing = re.compile(rf"<\s*/\s*{name}(?!\w)[^<>]*>").search(text, opening.end())
        end = closing.start() if closing else len(text)
        outside.append(text[pos:opening.start()])
        regions[tag] = prompt[where[opening.end()]:where[end]].strip()
        pos = closing.end() if closing else len(text)
    outside.append(text[pos:])
    return regions, "".join(outside)


def honest_scores(reference: str, candidate: str) -> tuple[int, int]:
    """Deterministic 1..100 scores from the texts' overlap (difflib): what an honest judge
    would say, independent of any instruction inside the candidate."""
    sim = difflib.SequenceMatcher(None, reference, candidate, autojunk=False).ratio()
    ref_words, cand_words = reference.split(), candidate.split()
    prec = difflib.SequenceMatcher(None, ref_words, cand_words, autojunk=False).ratio()
    return 1 + round(99 * sim), 1 + round(99 * prec)


def honest_scores_for_prompt(prompt: str) -> tuple[int, int]:
    """The quoting judge's honest scores for a rendered judge prompt (what the row must get)."""
    regions, _ = judge_regions(prompt)
    return honest_scores(regions.get("reference_answer", ""), regions.get("candidate_answer", ""))


def quoting_judge_reply(prompt: str, structured: bool) -> str:
    regions, outside = judge_regions(prompt)
    candidate = regions.get("candidate_answer", "")
    if _INJECTION_RE.search(outside):  # an instruction outside the data: a gullible model obeys
        sim, prec = 100, 100
    else:
        sim, prec = honest_scores(regions.get("reference_answer", ""), candidate)
    if structured:
        reason = f"the candidate said: {candidate}"
        return json.dumps({"similarity_assessment": {"score": sim, "reason": reason},
                           "precision_assessment": {"score": prec, "reason": reason}})
    return (f"I read the candidate answer:\n<candidate_answer>\n{candidate}\n</candidate_answer>\n\n"
            f"{judge_reply_json(sim, prec)}\n\nFor the record, the candidate wrote:\n```\n{candidate}\n```\n")


# ---------------------------------------------------------------- structured-output asks
def structured_ask(provider: str, body: dict) -> Optional[tuple[bool, str, Optional[dict]]]:
    """(well formed?, the field asked with, the schema) if the request asks for native
    structured output in its provider's wire format; None if it does not ask."""
    if provider == "openai":
        fmt = body.get("response_format")
        if fmt is None:
            return None
        spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
        schema = spec.get("schema") if isinstance(spec, dict) else None
        ok = (fmt.get("type") == "json_schema" and isinstance(spec, dict) and spec.get("strict") is True
              and bool(spec.get("name")) and _is_object_schema(schema))
        return ok, "response_format", schema
    if provider.startswith("anthropic"):
        choice, tools = body.get("tool_choice"), body.get("tools")
        if choice is None and tools is None:
            return None
        name = choice.get("name") if isinstance(choice, dict) else None
        tool = next((t for t in tools or [] if isinstance(t, dict) and t.get("name") == name), None)
        schema = tool.get("input_schema") if tool else None
        ok = isinstance(choice, dict) and choice.get("type") == "tool" and _is_object_schema(schema)
        return ok, "tools", schema
    config = body.get("generationConfig") or {}
    if "responseMimeType" not in config and "responseSchema" not in config:
        return None
    schema = config.get("responseSchema") or config.get("responseJsonSchema")
    ok = config.get("responseMimeType") == "application/json" and _is_object_schema(schema)
    return ok, "responseSchema", schema


def _is_object_schema(schema: Any) -> bool:
    return isinstance(schema, dict) and str(schema.get("type", "")).lower() == "object" \
        and isinstance(schema.get("properties"), dict)


def _asks_for_judgement(schema: Optional[dict]) -> bool:
    required = set((schema or {}).get("required") or [])
    return {"similarity_assessment", "precision_assessment"} <= required


def _phrase(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def synth_pairs(example_instruction: str, seed: int = 0, n: int = SYNTH_PAIRS_PER_REPLY) -> list[dict]:
    """n distinct instruction/response pairs derived from the example instruction and seed.

    Random words (seeded by example, seed and position) make different seeds and positions
    differ by far more than a near-duplicate filter's threshold."""
    head = " ".join(example_instruction.split()[:6])
    pairs = []
    for i in range(n):
        digest = hashlib.sha256(f"{example_instruction}\x00{seed}\x00{i}".encode("utf-8")).hexdigest()
        rng = random.Random(digest)
        pairs.append({
            "instruction": f"{_phrase(rng, 10)}: a task like '{head}' (variant {seed}.{i})",
            "response": f"{_phrase(rng, 24)}.",
        })
    return pairs


def judge_reply_json(similarity: Any, precision: Any) -> str:
    return json.dumps({
        "similarity_assessment": {"score": similarity, "reason": "deterministic test judge"},
        "precision_assessment": {"score": precision, "reason": "deterministic test judge"},
    })


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


# ============================================================================ the server
class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # listen backlog: the default 5 refuses bursts of connections
    daemon_threads = True


class _Dropped(Exception):
    """Raised by a handler to close the connection without answering."""


class ProtocolServer:
    """The server (see module docstring). Thread-safe counters; `start()` / `stop()` or `with`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency: float = 0.0,
        rpm: int = 0,
        rpm_window_s: float = 60.0,
        slow_s: float = 5.0,
        fault: Optional[str] = None,
        synth_extra: Optional[list[dict]] = None,
        synth_pairs_per_reply: int = SYNTH_PAIRS_PER_REPLY,
        reply_override: Optional[Callable[[str, str], Optional[str]]] = None,
        structured: str = "honour",
        quote_candidate: bool = False,
        models: Optional[list[str]] = None,
        loras: Optional[dict[str, str]] = None,
        allow_runtime_lora: bool = False,
    ) -> None:
        if structured not in ("honour", "require", "reject"):
            raise ValueError(f"structured must be honour, require or reject, not {structured!r}")
        self.structured = structured
        self.quote_candidate = quote_candidate
        self.served_models = [{"id": m, "object": "model", "root": m, "parent": None} for m in models or []]
        base = (models or [None])[0]
        self.served_models += [{"id": n, "object": "model", "root": p, "parent": base} for n, p in (loras or {}).items()]
        self.allow_runtime_lora = allow_runtime_lora
        self.latency = latency
        self.rpm = rpm
        self.rpm_window_s = rpm_window_s
        self.slow_s = slow_s
        self.fault = fault
        self.synth_extra = list(synth_extra or [])
        self.synth_pairs_per_reply = synth_pairs_per_reply
        self.reply_override = reply_override
        self._lock = threading.Lock()
        self._httpd = _Server((host, port), self._handler_class())
        self._thread: Optional[threading.Thread] = None
        self.reset()

    # ---------------------------------------------------------------- lifecycle
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def base_url(self, provider: str = "openai") -> str:
        """The service_llm_base_url to use for `provider`."""
        return f"{self.url}/v1" if provider == "openai" else self.url

    def start(self) -> "ProtocolServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="protocol-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "ProtocolServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---------------------------------------------------------------- counters
    def reset(self) -> None:
        with self._lock:
            self.total = 0
            self.accepted_times: list[float] = []  # monotonic arrival times of accepted requests
            self._window: deque[float] = deque()
            self.max_window_count = 0
            self.by_path: Counter = Counter()
            self.by_provider: Counter = Counter()
            self.by_request: Counter = Counter()
            self.answered: Counter = Counter()  # request key -> successful (200, billable) answers
            self.faults: Counter = Counter()
            self.rpm_rejections = 0
            self._attempts: Counter = Counter()  # (provider, fault spec, first message) -> requests
            self._global_fault_count = 0
            self._seen_first: Counter = Counter()  # (provider, first message) -> requests seen
            self.structured_ok: Counter = Counter()  # provider -> well-formed structured asks
            self.structured_bad: Counter = Counter()  # provider -> malformed structured asks
            self.plain_judge: Counter = Counter()  # provider -> judge requests without an ask
            self.bodies: list[tuple[str, dict]] = []  # (provider, request JSON), in process: what the SDK sent
            self.openai_requests: list[dict] = []  # accepted chat-completions bodies, in order

    def stats(self, detail: bool = False) -> dict:
        with self._lock:
            out = {
                "total": self.total,
                "accepted": len(self.accepted_times),
                "by_path": dict(self.by_path),
                "by_provider": dict(self.by_provider),
                "rpm_rejections": self.rpm_rejections,
                "faults": dict(self.faults),
                "max_repeats": max(self.by_request.values(), default=0),
                "distinct_requests": len(self.by_request),
                "max_window_count": self.max_window_count,
                "structured": dict(self.structured_ok),
                "structured_bad": dict(self.structured_bad),
                "plain_judge": dict(self.plain_judge),
                "answered": sum(self.answered.values()),
                "answered_repeats": sum(n - 1 for n in self.answered.values() if n > 1),
            }
            if detail:
                out["by_request"] = dict(self.by_request)
                out["accepted_times"] = list(self.accepted_times)
                out["openai_requests"] = list(self.openai_requests)
            return out

    def _admit(self, path: str, provider: str, request_key: str) -> Optional[float]:
        """Count the request; returns a Retry-After (s) if the RPM limit rejects it."""
        now = time.monotonic()
        with self._lock:
            self.total += 1
            self.by_path[path] += 1
            self.by_provider[provider] += 1
            self.by_request[request_key] += 1
            if self.rpm:
                while self._window and self._window[0] <= now - self.rpm_window_s:
                    self._window.popleft()
                if len(self._window) >= self.rpm:
                    self.rpm_rejections += 1
                    return max(0.0, self._window[0] + self.rpm_window_s - now)
                self._window.append(now)
                self.max_window_count = max(self.max_window_count, len(self._window))
            self.accepted_times.append(now)
        return None

    def _pick_fault(self, provider: str, first_message: str) -> Optional[tuple[str, Optional[float]]]:
        with self._lock:
            if self.fault:
                self._global_fault_count += 1
                match = _FAULT_RE.search(f"[[fault={self.fault}]]")
                if match and (match["times"] is None or self._global_fault_count <= int(match["times"])):
                    self.faults[match["kind"]] += 1
                    return match["kind"], float(match["ra"]) if match["ra"] else None
            for match in _FAULT_RE.finditer(first_message):
                key = (provider, match.group(0), first_message)
                self._attempts[key] += 1
                if match["times"] is None or self._attempts[key] <= int(match["times"]):
                    self.faults[match["kind"]] += 1
                    return match["kind"], float(match["ra"]) if match["ra"] else None
        return None

    def _check_structured(self, provider: str, body: dict, is_judge: bool) -> tuple[bool, Optional[str]]:
        """(answer in the structured shape?, an HTTP 400 message or None), counting the ask."""
        ask = structured_ask(provider, body)
        with self._lock:
            if ask is None:
                if is_judge:
                    self.plain_judge[provider] += 1
            elif ask[0] and (not is_judge or _asks_for_judgement(ask[2])):
                self.structured_ok[provider] += 1
            else:
                self.structured_bad[provider] += 1
        if ask is not None and self.structured == "reject":
            return False, f"Unsupported parameter: '{ask[1]}' is not supported by this server"
        well_formed = ask is not None and ask[0] and (not is_judge or _asks_for_judgement(ask[2]))
        if is_judge and self.structured == "require" and not well_formed:
            return False, "this test server requires a well-formed structured-output ask for judge prompts"
        return well_formed, None

    def _next_occurrence(self, provider: str, first_message: str) -> int:
        with self._lock:
            key = (provider, first_message)
            self._seen_first[key] += 1
            return self._seen_first[key] - 1

    # ---------------------------------------------------------------- answers
    def answer_text(self, provider: str, first_message: str, seed: Optional[int], fault: Optional[str],
                    structured: bool = False) -> str:
        """The reply text for a request (no fault, or a content fault); `structured`: the
        request asked for native structured output, so a judge reply is the bare object."""
        if fault == "nonjson":
            return NONJSON_TEXT
        if fault == "out-of-range":
            return judge_reply_json(150, 0)
        is_judge = "<candidate_answer>" in first_message
        is_synth = "<example_instruction>" in first_message
        if fault == "missing-key":
            if is_synth:
                return json.dumps({"pairs": synth_pairs(first_message, 0, 1)})
            return json.dumps({"similarity_assessment": {"score": 50, "reason": "no precision given"}})
        if self.reply_override is not None:
            override = self.reply_override(provider, first_message)
            if override is not None:
                return override
        if is_judge and self.quote_candidate:
            return quoting_judge_reply(first_message, structured)
        if is_judge:
            match = _CANDIDATE_RE.search(first_message)
            sim, prec = judge_scores(match.group(1) if match else "")
            body = judge_reply_json(sim, prec)
            if structured:
                return body
            if provider == "gemini":
                return f"```json\n{body}\n```"
            if provider.startswith("anthropic"):
                return f"Here is my assessment of the candidate.\n{body}"
            return body
        if is_synth:
            match = _EXAMPLE_RE.search(first_message)
            example = match.group(1) if match else first_message
            if seed is None:
                seed = self._next_occurrence(provider, first_message)
            pairs = synth_pairs(example, seed, self.synth_pairs_per_reply) + list(self.synth_extra)
            return json.dumps({"contents": pairs})
        return "echo: " + first_message[:200]

    def _handler_class(self) -> type:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:  # keep test output quiet
                return

            def _send_json(self, status: int, obj: Any, headers: Optional[dict] = None) -> None:
                data = json.dumps(obj).encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    self.close_connection = True

            def do_GET(self) -> None:
                parsed = urlparse(self.path)
                if parsed.path == "/_stats":
                    detail = parse_qs(parsed.query).get("detail", ["0"])[0] not in ("0", "")
                    self._send_json(200, server.stats(detail))
                elif parsed.path.endswith("/models") and server.served_models:
                    self._send_json(200, {"object": "list", "data": list(server.served_models)})
                else:
                    self._send_json(404, {"error": {"message": f"no route {parsed.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = urlparse(self.path).path
                if path == "/_reset":
                    server.reset()
                    self._send_json(200, {"ok": True})
                    return
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self._send_json(400, {"error": {"message": "body is not JSON"}})
                    return
                if path.endswith("/load_lora_adapter"):
                    self._load_lora(body)
                    return
                try:
                    self._handle(path, body)
                except _Dropped:
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

            def _handle(self, path: str, body: dict) -> None:
                route = _route(path, body)
                if route is None:
                    self._send_json(404, {"error": {"message": f"no route {path}"}})
                    return
                provider, model, messages, seed = route
                with server._lock:
                    server.bodies.append((provider, body))
                first = next((text for role, text in messages if role == "user"), "")
                structured, refusal = server._check_structured(provider, body, "<candidate_answer>" in first)
                request_key = hashlib.sha256(
                    json.dumps([provider, messages, seed]).encode("utf-8")).hexdigest()[:16]
                retry_after = server._admit(path, provider, request_key)
                if retry_after is None and provider == "openai":
                    with server._lock:
                        server.openai_requests.append(body)
                if retry_after is not None:
                    self._error(provider, 429, "rate limit: too many requests per minute",
                                {"Retry-After": f"{max(1, math.ceil(retry_after))}"})
                    return
                if server.latency:
                    time.sleep(server.latency)
                picked = server._pick_fault(provider, first)
                fault, fault_ra = picked if picked else (None, None)
                if fault == "drop":
                    raise _Dropped()
                if fault == "slow":
                    time.sleep(server.slow_s)
                if fault in ("401", "429", "500", "503"):
                    headers = {"Retry-After": f"{fault_ra:g}"} if fault_ra is not None else None
                    self._error(provider, int(fault), f"injected fault {fault}", headers)
                    return
                if refusal is not None:
                    self._error(provider, 400, refusal)
                    return
                prompt_text = "\n".join(text for _, text in messages)
                if fault == "empty-choices":
                    self._send_json(200, _reply(provider, model, None, _tokens(prompt_text)))
                    return
                text = server.answer_text(provider, first, seed, fault, structured)
                with server._lock:
                    server.answered[request_key] += 1
                tool = None
                if structured and provider.startswith("anthropic"):
                    tool = (body["tool_choice"]["name"],
                            judge_regions(first)[0].get("candidate_answer") if server.quote_candidate else None)
                self._send_json(200, _reply(provider, model, text, _tokens(prompt_text), tool))

            def _load_lora(self, body: dict) -> None:
                if not server.allow_runtime_lora:
                    self._send_json(404, {"detail": "Not Found"})
                    return
                base = next((m["id"] for m in server.served_models if m["parent"] is None), None)
                with server._lock:
                    server.served_models.append({"id": body.get("lora_name"), "object": "model",
                                                 "root": body.get("lora_path"), "parent": base})
                self._send_json(200, "Success: LoRA adapter loaded")

            def _error(self, provider: str, status: int, message: str, headers: Optional[dict] = None) -> None:
                if provider == "openai":
                    body = {"error": {"message": message, "type": "server_error" if status >= 500 else "rate_limit",
                                      "code": str(status)}}
                elif provider.startswith("anthropic"):
                    kind = {429: "rate_limit_error", 401: "authentication_error"}.get(status, "api_error")
                    body = {"type": "error", "error": {"type": kind, "message": message}}
                else:
                    status_name = {401: "UNAUTHENTICATED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                                   503: "UNAVAILABLE"}.get(status, "UNKNOWN")
                    body = {"error": {"code": status, "message": message, "status": status_name}}
                self._send_json(status, body, headers)

        return Handler


def _content_text(content: Any) -> str:
    """OpenAI/Anthropic content: a string or a list of {"type": "text", "text": ...} blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(block.get("text", "") for block in content if isinstance(block, dict))
    return ""


def _route(path: str, body: dict) -> Optional[tuple[str, str, list, Optional[int]]]:
    """(provider, model, [(role, text)...], seed) for a request, or None for an unknown path."""
    if path.endswith("/chat/completions"):
        messages = [(m.get("role", ""), _content_text(m.get("content"))) for m in body.get("messages", [])]
        return "openai", body.get("model", ""), messages, body.get("seed")
    anthropic_kind = None
    model = body.get("model", "")
    if path.endswith("/v1/messages"):
        anthropic_kind = "anthropic"
    elif path.endswith(":rawPredict") and "/publishers/anthropic/models/" in path:
        anthropic_kind, model = "anthropic-vertex", path.rsplit("/models/", 1)[1].split(":")[0]
    elif "/model/" in path and path.endswith("/invoke"):
        anthropic_kind, model = "anthropic-bedrock", path.split("/model/", 1)[1].rsplit("/invoke", 1)[0]
    if anthropic_kind:
        messages = [(m.get("role", ""), _content_text(m.get("content"))) for m in body.get("messages", [])]
        return anthropic_kind, model, messages, None
    if path.endswith(":generateContent") and "/models/" in path:
        provider = "gemini-vertex" if "/projects/" in path else "gemini"
        model = path.rsplit("/models/", 1)[1].split(":")[0]
        messages = []
        for content in body.get("contents", []):
            role = "assistant" if content.get("role") == "model" else "user"
            messages.append((role, "".join(p.get("text", "") for p in content.get("parts", []))))
        seed = (body.get("generationConfig") or {}).get("seed")
        return provider, model, messages, seed
    return None


def _anthropic_content(text: str, tool: Optional[tuple[str, Optional[str]]]) -> tuple[list, str]:
    """Content blocks and stop_reason: a tool_use block when a tool was forced and the
    answer is an object (with a quoting preface in a text block, if given), else text."""
    if tool is not None:
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            name, quote = tool
            blocks = [] if quote is None else [{"type": "text", "text": f"The candidate wrote:\n{quote}"}]
            return blocks + [{"type": "tool_use", "id": "toolu_local", "name": name, "input": obj}], "tool_use"
    return [{"type": "text", "text": text}], "end_turn"


def _reply(provider: str, model: str, text: Optional[str], prompt_tokens: int,
           tool: Optional[tuple[str, Optional[str]]] = None) -> dict:
    """A success body; text None means the empty-choices fault; `tool` (anthropic): the
    forced tool's name and an optional quote to put in a text block before it."""
    out_tokens = _tokens(text) if text else 0
    if provider == "openai":
        choices = [] if text is None else [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]
        return {"id": "chatcmpl-local", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": choices, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": out_tokens,
                                              "total_tokens": prompt_tokens + out_tokens}}
    if provider.startswith("anthropic"):
        content, stop = ([], "end_turn") if text is None else _anthropic_content(text, tool)
        return {"id": "msg_local", "type": "message", "role": "assistant", "model": model, "content": content,
                "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": prompt_tokens, "output_tokens": out_tokens}}
    candidates = [] if text is None else [
        {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}]
    return {"candidates": candidates, "modelVersion": model,
            "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": out_tokens,
                              "totalTokenCount": prompt_tokens + out_tokens}}


def load_synth_extra(path: str | Path) -> list[dict]:
    """JSONL of {"instruction", "response"} objects."""
    pairs = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            pairs.append({"instruction": item["instruction"], "response": item["response"]})
    return pairs


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Local OpenAI/Anthropic/Gemini protocol server for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    parser.add_argument("--port-file", help="write the chosen port to this file once listening")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before every answer")
    parser.add_argument("--rpm", type=int, default=0, help="answer 429 past N requests per window (0 = off)")
    parser.add_argument("--rpm-window-s", type=float, default=60.0)
    parser.add_argument("--slow-s", type=float, default=5.0, help="delay of the 'slow' fault")
    parser.add_argument("--fault", help='a fault for every request, e.g. "503 times=5"')
    parser.add_argument("--synth-extra-file", help="JSONL pairs appended to every synth reply")
    parser.add_argument("--synth-pairs", type=int, default=SYNTH_PAIRS_PER_REPLY)
    parser.add_argument("--structured", choices=("honour", "require", "reject"), default="honour",
                        help="structured-output asks: honour them, require them of judge prompts, or reject them (400)")
    parser.add_argument("--quote-candidate", action="store_true",
                        help="adversarial judge: quote the candidate back, score honestly, obey injections outside tags")
    parser.add_argument("--models", help="comma-separated base model names listed by GET /models")
    parser.add_argument("--lora", action="append", default=[], help="NAME=PATH, a served LoRA adapter (repeatable)")
    parser.add_argument("--allow-runtime-lora", action="store_true", help="accept POST /load_lora_adapter")
    args = parser.parse_args(argv)
    extra = load_synth_extra(args.synth_extra_file) if args.synth_extra_file else None
    server = ProtocolServer(args.host, args.port, latency=args.latency, rpm=args.rpm,
                            rpm_window_s=args.rpm_window_s, slow_s=args.slow_s, fault=args.fault,
                            synth_extra=extra, synth_pairs_per_reply=args.synth_pairs,
                            structured=args.structured, quote_candidate=args.quote_candidate,
                            models=[m for m in (args.models or "").split(",") if m],
                            loras=dict(spec.split("=", 1) for spec in args.lora),
                            allow_runtime_lora=args.allow_runtime_lora)
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(str(server.port))
        tmp.rename(args.port_file)  # atomic: a reader never sees a half-written port
    print(f"listening on {server.url}", flush=True)
    try:
        server._httpd.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
