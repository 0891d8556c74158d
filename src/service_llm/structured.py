"""Structured replies: find the JSON object in a reply and validate it against a stage schema.

Models wrap JSON in code fences or add a sentence before/after it; `extract_json` tolerates
that. The validators raise `InvalidReply` with a short reason: `ServiceLLM.run` sends that
reason back to the model in a re-ask, and records it as the row's failure reason when the
re-asks run out (a failed row is never scored 0).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from src.service_llm.records import InvalidReply

SCORE_MIN = 1
SCORE_MAX = 100

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class Judgement:
    """The evaluation judge's verdict for one (instruction, reference, candidate)."""

    similarity: float
    precision: float
    similarity_reason: str
    precision_reason: str


@dataclass(frozen=True)
class SynthPair:
    """One synthetic instruction/response pair."""

    instruction: str
    response: str


def _snippet(text: str, n: int = 80) -> str:
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
    raise InvalidReply(f"no JSON object in the reply: '{_snippet(text)}'")


def _score(obj: dict, key: str) -> tuple[float, str]:
    section = obj.get(key)
    if not isinstance(section, dict):
        raise InvalidReply(f"missing key '{key}' (an object with 'score' and 'reason')")
    if "score" not in section:
        raise InvalidReply(f"missing key '{key}.score'")
    raw = section["score"]
    if isinstance(raw, bool):
        raise InvalidReply(f"'{key}.score' is not a number: {raw!r}")
    if isinstance(raw, str):
        try:
            raw = float(raw.strip())
        except ValueError:
            raise InvalidReply(f"'{key}.score' is not a number: {section['score']!r}") from None
    if not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise InvalidReply(f"'{key}.score' is not a number: {raw!r}")
    if not SCORE_MIN <= raw <= SCORE_MAX:
        raise InvalidReply(f"'{key}.score' = {raw:g} is out of range {SCORE_MIN}..{SCORE_MAX}")
    reason = section.get("reason", "")
    return float(raw), reason if isinstance(reason, str) else json.dumps(reason)


def parse_judgement(text: str) -> Judgement:
    """Validate the evaluation schema:
    `{"similarity_assessment": {"score", "reason"}, "precision_assessment": {"score", "reason"}}`
    with numeric scores in 1..100 (out of range is invalid, never clipped)."""
    obj = extract_json(text)
    sim, sim_reason = _score(obj, "similarity_assessment")
    prec, prec_reason = _score(obj, "precision_assessment")
    return Judgement(sim, prec, sim_reason, prec_reason)


def parse_synth_pairs(text: str) -> list[SynthPair]:
    """Validate the data_gen schema: `{"contents": [{"instruction", "response"}, ...]}`, a
    non-empty list whose every item has a non-empty instruction and response."""
    obj = extract_json(text)
    contents = obj.get("contents")
    if contents is None:
        raise InvalidReply("missing key 'contents' (a list of {instruction, response})")
    if not isinstance(contents, list) or not contents:
        raise InvalidReply("'contents' must be a non-empty list of {instruction, response}")
    pairs = []
    for i, item in enumerate(contents):
        if not isinstance(item, dict):
            raise InvalidReply(f"contents[{i}] is not an object")
        for key in ("instruction", "response"):
            value = item.get(key)
            if not isinstance(value, str) or not value.strip():
                raise InvalidReply(f"contents[{i}].{key} is missing or empty")
        pairs.append(SynthPair(item["instruction"].strip(), item["response"].strip()))
    return pairs


def reask_message(reason: str) -> str:
    """The follow-up user turn sent after an invalid reply (the reply stays in the history)."""
    return (
        f"Your previous reply could not be used: {reason}. Reply again with only the JSON "
        "object requested above, exactly in the requested format, and nothing else."
    )


def as_jsonable(value: Any) -> Any:
    """Best-effort plain-data view of a parsed value (for logs and reports)."""
    if isinstance(value, (Judgement, SynthPair)):
        return value.__dict__.copy()
    if isinstance(value, list):
        return [as_jsonable(v) for v in value]
    return value
