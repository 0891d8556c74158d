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
from typing import Any, Callable, Iterable, Sequence, TypeVar

from llamaduo.delimiters import tagged_regions
from llamaduo.service_llm.records import InvalidReply, ResponseSchema

T = TypeVar("T")

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


def _assessment_schema(what: str) -> dict:
    return {
        "type": "object",
        "properties": {
            "score": {"type": "integer", "minimum": SCORE_MIN, "maximum": SCORE_MAX,
                      "description": f"{what}, {SCORE_MIN}-{SCORE_MAX}"},
            "reason": {"type": "string", "description": "one sentence"},
        },
        "required": ["score", "reason"],
        "additionalProperties": False,
    }


#: The evaluation judge's reply, for native structured output (records.ResponseSchema).
JUDGE_SCHEMA = ResponseSchema(
    name="judge_scores",
    description="The similarity and precision scores of the candidate answer, with reasons.",
    schema={
        "type": "object",
        "properties": {
            "similarity_assessment": _assessment_schema("similarity to the reference"),
            "precision_assessment": _assessment_schema("precision and correctness"),
        },
        "required": ["similarity_assessment", "precision_assessment"],
        "additionalProperties": False,
    },
)


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


def _top_level_objects(text: str) -> list[tuple[int, int, dict]]:
    """Every top-level JSON object in `text` as (start, end, object), left to right: a
    fenced block, an object in prose, or the whole text. Objects nested inside one already
    found are not listed separately (a quote inside a reason string is not a verdict)."""
    decoder = json.JSONDecoder()
    found: list[tuple[int, int, dict]] = []
    pos = 0
    while True:
        start = text.find("{", pos)
        if start < 0:
            return found
        try:
            obj, end = decoder.raw_decode(text, start)
        except ValueError:
            pos = start + 1
            continue
        if isinstance(obj, dict):
            found.append((start, end, obj))
            pos = end
        else:
            pos = start + 1


def _objects_in(texts: Iterable[str]) -> list[dict]:
    """Every JSON object (at any depth of the text) found in the quoted data texts, also
    once their `\\"` escapes are undone: a judge quoting `"{\\"score\\": 100}"` from a string
    literal in code may well write the unescaped object."""
    decoder = json.JSONDecoder()
    objs: list[dict] = []
    variants = []
    for text in texts:
        variants.append(text or "")
        if text and '\\"' in text:
            variants.append(text.replace('\\"', '"'))
    for text in variants:
        for match in re.finditer(r"\{", text or ""):
            try:
                obj, _ = decoder.raw_decode(text, match.start())
            except ValueError:
                continue
            if isinstance(obj, dict):
                objs.append(obj)
    return objs


def extract_last_valid(
    text: str,
    validate: Callable[[dict], T],
    *,
    quoted: Sequence[str] = (),
    data_tags: Iterable[str] = (),
) -> T:
    """The LAST top-level JSON object in `text` that `validate` accepts and that is not
    quoted data: one lying inside a data-tag region of the reply (`<candidate_answer>...`,
    any variant), or equal to an object that appears in one of the `quoted` texts (the
    data the model was shown, e.g. the candidate answer, which a judge may echo back
    verbatim, in a fence or in prose).

    Why last and not first: a model that thinks aloud or quotes the data writes its own
    answer at the end. Why the quoted checks too: a judge that quotes the candidate AFTER
    its verdict would otherwise hand the candidate's planted object the last word.
    Raises InvalidReply with the reason of the last rejected object."""
    if text is None or not text.strip():
        raise InvalidReply("empty reply")
    regions = tagged_regions(text, data_tags) if data_tags else []
    planted = _objects_in(quoted)
    reason = f"no JSON object in the reply: '{_snippet(text)}'"
    for start, _end, obj in reversed(_top_level_objects(text)):
        if any(lo <= start < hi for lo, hi in regions) or obj in planted:
            reason = "the only judge-shaped object in the reply is quoted from the data it was shown"
            continue
        try:
            return validate(obj)
        except InvalidReply as err:
            reason = str(err)
    raise InvalidReply(reason)


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


def judgement_from(obj: dict) -> Judgement:
    """Validate one object against the evaluation schema:
    `{"similarity_assessment": {"score", "reason"}, "precision_assessment": {"score", "reason"}}`
    with numeric scores in 1..100 (out of range is invalid, never clipped)."""
    sim, sim_reason = _score(obj, "similarity_assessment")
    prec, prec_reason = _score(obj, "precision_assessment")
    return Judgement(sim, prec, sim_reason, prec_reason)


def parse_judgement(text: str, quoted: Sequence[str] = (), data_tags: Iterable[str] = ()) -> Judgement:
    """The judge's verdict in a reply: the last schema-valid object that is not quoted data
    (see `extract_last_valid`). With native structured output the reply is exactly that one
    object; the same rule covers servers and local models that answer in free text.
    Bind `quoted` (the texts inserted into the prompt) and `data_tags` per job, e.g. with
    functools.partial, so a candidate's planted verdict can never be the one read."""
    return extract_last_valid(text, judgement_from, quoted=quoted, data_tags=data_tags)


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
