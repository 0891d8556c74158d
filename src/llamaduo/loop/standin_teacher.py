"""A STAND-IN teacher for the offline demo: a tiny OpenAI-compatible server that writes new
support-ticket pairs (llamaduo.loop.demo_tickets) when data_gen asks it for synthetic data.

WHY it exists: the loop's data-generation branch needs a service LLM, and the demo must run
offline with no key. This program is NOT a language model. It answers data_gen's real request
(the [synth_data_gen] prompt, sent by the `openai` provider through the official SDK, with its
pacing, retries, ledger and structured output) with pairs drawn from the demo's seeded ticket
generator, so the loop's data_gen -> dataset_merge -> next round path runs for real.

Like a real teacher it also writes bad pairs, in fixed shares, so data_gen's checks have
something to catch (their counts by reason land in data_gen's summary.json):
- `wrong_label`: a valid label that is wrong for the ticket. No format check can see this;
  the pairs pass data_gen and are label noise in the next round's training data;
- `off_label`: an answer outside the label set ("refund", "Billing issue."): data_gen's
  `labels` check drops it (`label_not_in_set`);
- `duplicate`: the same pair twice in one reply (`near_duplicate`), or the seed's own
  instruction (`same_as_seed`);
- `test_copy`: a prompt of the demo's held-out test split, regenerated from the same seeded
  generator (`demo_tickets.test_pairs`): decontamination must drop it (`test_contamination`).
Good pairs use only the training phrasing templates, never the test ones.

Wire format: POST .../chat/completions (OpenAI Chat Completions; a `response_format` of type
json_schema is honoured: the message content is then the bare JSON object), GET .../models.
Every reply has `usage` (about 4 characters per token) so the ledger records tokens.

Run (the loop does this when data_gen's `service_model_name` is `llamaduo-standin-teacher`):
    python -m llamaduo.loop.standin_teacher --port-file FILE [--port 0] [--parent-pid PID]
It binds 127.0.0.1 only, writes its port to FILE once it listens, and stops by itself when
--parent-pid exits (or on SIGTERM/SIGINT).

Standard library only (http.server): a handful of requests a run needs no framework.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import signal
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from llamaduo.loop import demo_tickets as tickets

MODEL = "llamaduo-standin-teacher"
logger = logging.getLogger("llamaduo.standin_teacher")

# Shares of the pairs in one reply, by kind (the rest are good pairs).
BAD_SHARES = {"wrong_label": 0.08, "off_label": 0.08, "duplicate": 0.08, "test_copy": 0.08}
OFF_LABELS = ("refund", "payment", "Billing issue.", "technical problem", "delivery", "other")
_TAG = re.compile(r"<example_(instruction|response)>\s*(.*?)\s*</example_\1>", re.DOTALL)


class NotASynthRequest(ValueError):
    """The request is not data_gen's synthetic-data prompt (the stand-in writes nothing else)."""


def example_of(prompt: str) -> tuple[str, str]:
    """(instruction, response) of the example a [synth_data_gen] prompt carries."""
    found = {m.group(1): m.group(2) for m in _TAG.finditer(prompt)}
    if "instruction" not in found:
        raise NotASynthRequest("the stand-in teacher only answers data_gen's synthetic-data prompt "
                               "(no <example_instruction> block in the last user message)")
    return found["instruction"], found.get("response", "")


def write_pairs(example_instruction: str, example_label: str, seed: int, n: int,
                test_prompts: list[str]) -> tuple[list[dict[str, str]], Counter[str]]:
    """`n` pairs for one request, deterministic in (seed, example): mostly good pairs around
    the example's label, and bad ones in the BAD_SHARES proportions. Returns the pairs and
    the count of each kind written."""
    rng = random.Random(f"{seed}\x00{example_instruction}")
    kinds: Counter[str] = Counter()
    pairs: list[dict[str, str]] = []
    for _ in range(n):
        kind = _draw_kind(rng)
        if kind == "duplicate":
            if pairs and rng.random() < 0.5:
                pairs.append(dict(rng.choice(pairs)))
            else:
                pairs.append({"instruction": example_instruction, "response": example_label})
        elif kind == "test_copy" and test_prompts:
            prompt = rng.choice(test_prompts)
            pairs.append({"instruction": prompt, "response": _label_guess(prompt, rng)})
        else:
            # like a teacher asked for "similar" pairs: the example's label more often than not
            label = example_label if example_label in tickets.LABELS and rng.random() < 0.4 \
                else rng.choice(tickets.LABELS)
            instruction = tickets.instruction_for(tickets.make_message(label, rng, tickets.TRAIN_TEMPLATES))
            if kind == "wrong_label":
                label = rng.choice([lab for lab in tickets.LABELS if lab != label])
            elif kind == "off_label":
                label = rng.choice(OFF_LABELS)
            else:
                kind = "good"
            pairs.append({"instruction": instruction, "response": label})
        kinds[kind] += 1
    return pairs, kinds


def _draw_kind(rng: random.Random) -> str:
    x = rng.random()
    for kind, share in BAD_SHARES.items():
        if x < share:
            return kind
        x -= share
    return "good"


def _label_guess(prompt: str, rng: random.Random) -> str:
    """A contaminated pair's answer: the test row's true label (what leaks when a teacher
    copies a test prompt)."""
    for pair in tickets.test_pairs():
        if pair.instruction == prompt:
            return pair.label
    return rng.choice(tickets.LABELS)


class Teacher:
    """The server's state: what it has written (for the log), and the test prompts to plant."""

    def __init__(self, pairs_per_reply: int) -> None:
        self.pairs_per_reply = pairs_per_reply
        self.test_prompts = [p.instruction for p in tickets.test_pairs()]
        self.kinds: Counter[str] = Counter()
        self.requests = 0
        self.lock = threading.Lock()
        self.last_activity = time.monotonic()

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI chat.completion object for one request body."""
        messages = body.get("messages") or []
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if not users:
            raise NotASynthRequest("no user message")
        content = users[0].get("content")
        prompt = content if isinstance(content, str) else json.dumps(content)
        instruction, response = example_of(prompt)
        seed = int(body.get("seed") or 0)
        pairs, kinds = write_pairs(instruction, response.strip(), seed, self.pairs_per_reply, self.test_prompts)
        obj = {"contents": pairs}
        structured = (body.get("response_format") or {}).get("type") == "json_schema"
        text = json.dumps(obj) if structured else "```json\n" + json.dumps(obj, indent=1) + "\n```"
        with self.lock:
            self.requests += 1
            self.kinds.update(kinds)
            n = self.requests
        logger.info("stand-in teacher: request %d (seed %d): %d pairs: %s", n, seed, len(pairs),
                    ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
        prompt_chars = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
        return {
            "id": f"standin-{n}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or MODEL,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": math.ceil(prompt_chars / 4), "completion_tokens": math.ceil(len(text) / 4),
                      "total_tokens": math.ceil(prompt_chars / 4) + math.ceil(len(text) / 4)},
        }


def make_handler(teacher: Teacher) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:  # the teacher logs its own lines
            pass

        def _send(self, status: int, obj: dict[str, Any]) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            teacher.last_activity = time.monotonic()

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"error": {"message": message, "type": "invalid_request_error"}})

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0].rstrip("/")
            if path.endswith("/models"):
                self._send(200, {"object": "list", "data": [
                    {"id": MODEL, "object": "model", "created": 0, "owned_by": "llamaduo (stand-in, not an LLM)"}]})
            else:  # the loop's reachability check GETs the base URL: any answer will do
                self._send(200, {"stand_in_teacher": MODEL, "routes": ["POST /v1/chat/completions", "GET /v1/models"]})

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0].rstrip("/")
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if not path.endswith("/chat/completions"):
                self._error(404, f"no route {path}: the stand-in teacher serves POST /v1/chat/completions")
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self._error(400, "the request body is not JSON")
                return
            try:
                self._send(200, teacher.complete(body))
            except NotASynthRequest as err:
                self._error(400, str(err))

    return Handler


def _stop_with_parent(server: ThreadingHTTPServer, parent_pid: int) -> None:
    """Shut the server down once `parent_pid` is gone: it never outlives the loop that
    started it, even when that loop is killed with SIGKILL and cannot clean up."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            logger.info("stand-in teacher: parent %d is gone; stopping", parent_pid)
            server.shutdown()
            return
        except PermissionError:
            continue


def serve(port: int, port_file: Path | None, parent_pid: int | None, pairs_per_reply: int) -> int:
    teacher = Teacher(pairs_per_reply)
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(teacher))
    server.daemon_threads = True
    bound = server.server_address[1]

    def on_signal(signum: int, _frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if parent_pid:
        threading.Thread(target=_stop_with_parent, args=(server, parent_pid), daemon=True).start()
    if port_file is not None:  # written last and atomically: its presence means "listening"
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(str(bound))
        tmp.replace(port_file)
    logger.info("stand-in teacher (NOT an LLM: seeded generator of demo ticket pairs) listening on "
                "http://127.0.0.1:%d/v1, model %s", bound, MODEL)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        logger.info("stand-in teacher: stopped after %d requests; pairs written by kind: %s", teacher.requests,
                    dict(sorted(teacher.kinds.items())) or "none")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamaduo.loop.standin_teacher",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--port-file", type=Path, default=None, help="write the bound port here once listening")
    parser.add_argument("--parent-pid", type=int, default=None, help="stop when this process exits")
    parser.add_argument("--pairs-per-reply", type=int, default=8, help="pairs in each reply (default 8)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"error: --port must be 0-65535, got {args.port}", file=sys.stderr)
        return 2
    if not 1 <= args.pairs_per_reply <= 100:
        print(f"error: --pairs-per-reply must be 1-100, got {args.pairs_per_reply}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    return serve(args.port, args.port_file, args.parent_pid, args.pairs_per_reply)


if __name__ == "__main__":
    sys.exit(main())
