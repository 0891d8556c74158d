"""Structured replies: find the JSON object in a reply, and the re-ask after an invalid one.

Models wrap JSON in code fences or add a sentence before/after it; `extract_json` tolerates
that. A stage's parser raises `InvalidReply` with a short reason: `ServiceLLM.run` sends that
reason back to the model in a re-ask, and records it as the row's failure reason when the
re-asks run out (a failed row is never scored 0). The judge's schema and parser are the
judge contract's (llamaduo.judging.contract).
"""
from __future__ import annotations

import json
import re

from llamaduo.service_llm.records import InvalidReply

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def snippet(text: str, n: int = 80) -> str:
    """`text` on one line, cut to `n` characters (for reasons quoting a reply)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 3] + "..."


def extract_json(text: str) -> dict:
    """Return the first JSON object in `text`: the whole text, a fenced block, or an object
    embedded in prose. Raises InvalidReply when there is none."""
    if text is None or not text.strip():
        raise InvalidReply("empty reply")
    stripped = text.strip()
    candidates = [stripped] + [m.group(1).strip() for m in _FENCE.finditer(text)]
    for cand in candidates:
        try:
            obj = json.loads(cand)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    raise InvalidReply(f"no JSON object in the reply: '{snippet(text)}'")


def reask_message(reason: str) -> str:
    """The follow-up user turn sent after an invalid reply (the reply stays in the history)."""
    return (
        f"Your previous reply could not be used: {reason}. Reply again with only the JSON "
        "object requested above, exactly in the requested format, and nothing else."
    )

