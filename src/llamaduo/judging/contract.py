"""The judge contract, declared once: what a judge is given, what it must reply, what the
evaluation writes.

- In: the `[eval]` prompt's placeholders and the input column each one is filled from
  (`PROMPT_FIELDS`), rendered with the data's delimiter tags neutralised (`render_prompts`).
- Back: the reply schema (`JUDGE_SCHEMA`, one `<score>_assessment` {score, reason} per name in
  `SCORES`, integers in `REPLY_RANGE`) and its parser (`parse_judgement`: the last
  schema-valid JSON object of the reply that is not quoted from the data). A judge hands back
  one `RepeatScore` per (row, repeat) in a `JudgeOutcome`; every score lives on `SCALE`.
- Out: the evaluation's output columns, each with its datasets feature and how its value is
  computed (`OUTPUT_COLUMNS`, the judge's columns and the task metric's `task_score`);
  `output_columns` and `output_features` both read it.

Why the parser takes the LAST valid object and skips quoted ones: a model that thinks aloud
writes its answer last, and a judge that echoes the candidate must never hand a verdict
planted in the candidate the last word (docs/evaluation.md, "A judged answer cannot move its
own score"). An invalid reply raises `InvalidReply` with a short reason that is sent back in a
re-ask; a judgement still invalid after the re-asks is a failure, never a 0.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple, Sequence, TypeVar

from datasets import List, Value

from llamaduo.delimiters import delimiter_tags, neutralize_tags, tagged_regions
from llamaduo.prompts import check_placeholders, load_template, render
from llamaduo.service_llm.records import InvalidReply, ResponseSchema
from llamaduo.service_llm.structured import snippet

if TYPE_CHECKING:
    from datasets import Dataset


T = TypeVar("T")

# --------------------------------------------------------------------------- in: the prompt

#: `[eval] prompt` placeholder -> the input column whose text fills it (in prompt order).
PROMPT_FIELDS = {
    "instruction": "instructions",
    "human_response": "target_responses",  # the reference answer
    "lm_response": "candidate_responses",  # the answer being judged
}
PLACEHOLDERS = tuple(PROMPT_FIELDS)
INPUT_COLUMNS = tuple(PROMPT_FIELDS.values())
PROMPT_TABLE = "eval"


def load_eval_template(path: str) -> str:
    """The `[eval]` prompt, with its placeholders checked (an unknown one is named)."""
    template = load_template(path, PROMPT_TABLE, "prompt")
    check_placeholders(template, PLACEHOLDERS, where=f"{path} [{PROMPT_TABLE}] prompt")
    return template


def render_prompts(template: str, rows: "Dataset", batch_size: int) -> list[str]:
    """One judge prompt per row. Every variant of the template's own delimiter tags inside
    the data is neutralised (llamaduo.delimiters), so a text cannot close its block; values
    are inserted verbatim (`$`, `{}` and code cannot break rendering)."""
    tags = delimiter_tags(template)
    prompts: list[str] = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        for texts in zip(*(batch[c] for c in INPUT_COLUMNS)):
            prompts.append(render(template, **{
                name: neutralize_tags(str(text or ""), tags) for name, text in zip(PLACEHOLDERS, texts)}))
    return prompts


# --------------------------------------------------------------------------- back: the reply

#: The scores every judge gives, with what each measures (the reply schema's descriptions).
SCORE_MEANINGS = {"similarity": "similarity to the reference", "precision": "precision and correctness"}
SCORES = tuple(SCORE_MEANINGS)
#: The scale every score (any judge's, and every mean) lives on.
SCALE = (0.0, 100.0)
#: The LLM judge's reply: integers in this range, as the prompt asks (out of range is
#: invalid, never clipped).
REPLY_RANGE = (1, 100)
#: A typical reply's size, for --dry-run cost estimates: two scores, two one-sentence reasons.
REPLY_TOKENS = 120


def reply_key(score: str) -> str:
    """The reply's object for one score: `{"similarity_assessment": {"score", "reason"}}`."""
    return f"{score}_assessment"


@dataclass(frozen=True)
class RepeatScore:
    """One repeat of one row: either a score per name in SCORES with its reason, or an error."""

    similarity: float | None = None
    precision: float | None = None
    similarity_reason: str = ""
    precision_reason: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(getattr(self, s) is not None for s in SCORES)

    @classmethod
    def failed(cls, error: str) -> "RepeatScore":
        return cls(error=error or "invalid judgement")


@dataclass(frozen=True)
class RowScore:
    """A row's aggregate over its repeats (aggregate.py computes it; the output columns read it)."""

    judgements: tuple[RepeatScore, ...]
    similarity: float | None
    precision: float | None
    similarity_std: float | None
    precision_std: float | None
    failures: int
    failure_reason: str | None

    @property
    def scored(self) -> bool:
        return self.similarity is not None


def _assessment_schema(meaning: str) -> dict:
    lo, hi = REPLY_RANGE
    return {
        "type": "object",
        "properties": {
            "score": {"type": "integer", "minimum": lo, "maximum": hi, "description": f"{meaning}, {lo}-{hi}"},
            "reason": {"type": "string", "description": "one sentence"},
        },
        "required": ["score", "reason"],
        "additionalProperties": False,
    }


#: The judge's reply, for native structured output (records.ResponseSchema).
JUDGE_SCHEMA = ResponseSchema(
    name="judge_scores",
    description="The similarity and precision scores of the candidate answer, with reasons.",
    schema={
        "type": "object",
        "properties": {reply_key(s): _assessment_schema(m) for s, m in SCORE_MEANINGS.items()},
        "required": [reply_key(s) for s in SCORES],
        "additionalProperties": False,
    },
)


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
    lo, hi = REPLY_RANGE
    if not lo <= raw <= hi:
        raise InvalidReply(f"'{key}.score' = {raw:g} is out of range {lo}..{hi}")
    reason = section.get("reason", "")
    return float(raw), reason if isinstance(reason, str) else json.dumps(reason)


def judgement_from(obj: dict) -> RepeatScore:
    """Validate one object against JUDGE_SCHEMA: a numeric score in REPLY_RANGE per score
    (a numeric string is accepted), with its reason."""
    values: dict[str, Any] = {}
    for name in SCORES:
        values[name], values[f"{name}_reason"] = _score(obj, reply_key(name))
    return RepeatScore(**values)


def _top_level_objects(text: str) -> list[tuple[int, int, dict]]:
    """Every top-level JSON object in `text` as (start, end, object), left to right. Objects
    nested inside one already found are not listed (a quote inside a reason is no verdict)."""
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
    """Every JSON object (at any depth) in the quoted data texts, also once their `\\"`
    escapes are undone: a judge quoting `"{\\"score\\": 100}"` from a string literal in code
    may well write the unescaped object."""
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


def extract_last_valid(text: str, validate: Callable[[dict], T], *, quoted: Sequence[str] = (),
                       data_tags: Iterable[str] = ()) -> T:
    """The LAST top-level JSON object in `text` that `validate` accepts and that is not
    quoted data: one inside a data-tag region of the reply (`<candidate_answer>...`, any
    variant), or one equal to an object found in the `quoted` texts (what the model was shown).
    Raises InvalidReply with the reason of the last rejected object."""
    if text is None or not text.strip():
        raise InvalidReply("empty reply")
    regions = tagged_regions(text, data_tags) if data_tags else []
    planted = _objects_in(quoted)
    reason = f"no JSON object in the reply: '{snippet(text)}'"
    for start, _end, obj in reversed(_top_level_objects(text)):
        if any(lo <= start < hi for lo, hi in regions) or obj in planted:
            reason = "the only judge-shaped object in the reply is quoted from the data it was shown"
            continue
        try:
            return validate(obj)
        except InvalidReply as err:
            reason = str(err)
    raise InvalidReply(reason)


def parse_judgement(text: str, quoted: Sequence[str] = (), data_tags: Iterable[str] = ()) -> RepeatScore:
    """The verdict in a judge reply (see `extract_last_valid`). With native structured output
    the reply is exactly that one object; the same rule reads free-text replies. Bind
    `quoted` (the row's texts) and `data_tags` per job, e.g. with functools.partial."""
    return extract_last_valid(text, judgement_from, quoted=quoted, data_tags=data_tags)


@dataclass
class JudgeOutcome:
    """What a judge hands back for a dataset: the prompt it sent per row ("" when none), the
    row's repeat scores, the evaluator's name, and what the judging cost."""

    prompts: list[str]
    repeats: list[list[RepeatScore]]
    evaluator: str
    usage: dict[str, Any] = field(default_factory=dict)
    effective_repeat: int = 1
    stopped_for_budget: bool = False


# --------------------------------------------------------------------------- out: the columns


class RowOut(NamedTuple):
    """What an output column's value is computed from, per row."""

    row: RowScore
    prompt: str
    evaluator: str
    date: str
    task_score: float | None = None  # the task metric's 0-100 row score (llamaduo.judging.task_metrics)


@dataclass(frozen=True)
class OutputColumn:
    """One evaluation output column: its name, its fixed datasets feature (fixed, not
    inferred, so a column that is all null in one run appends to the next), and its value."""

    name: str
    feature: Any
    value: Callable[[RowOut], Any]


_STR, _FLOAT = Value("string"), Value("float64")


def _per_score(pattern: str, feature: Any, value: Callable[[RowOut, str], Any]) -> list[OutputColumn]:
    return [OutputColumn(pattern.format(s), feature, lambda o, s=s: value(o, s)) for s in SCORES]


#: THE declaration of the evaluation's output columns, in output order.
OUTPUT_COLUMNS: tuple[OutputColumn, ...] = (
    OutputColumn("eval_prompts", _STR, lambda o: o.prompt),
    *_per_score("{}_scores", _FLOAT, lambda o, s: getattr(o.row, s)),
    OutputColumn("evaluators", _STR, lambda o: o.evaluator),
    OutputColumn("dates", _STR, lambda o: o.date),
    *_per_score("{}_per_repeat", List(_FLOAT), lambda o, s: [getattr(j, s) for j in o.row.judgements]),
    *_per_score("{}_reasons", List(_STR), lambda o, s: [getattr(j, f"{s}_reason") for j in o.row.judgements]),
    *_per_score("{}_std", _FLOAT, lambda o, s: getattr(o.row, f"{s}_std")),
    OutputColumn("failure_reason", _STR, lambda o: o.row.failure_reason),
    OutputColumn("task_score", _FLOAT, lambda o: o.task_score),  # null when no task_metric is set
)


def output_columns(rows: Sequence[RowScore], prompts: Sequence[str], evaluator: str,
                   date: str, task_scores: Sequence[float | None] | None = None) -> dict[str, list]:
    """The values of every column of OUTPUT_COLUMNS, in order."""
    scores = [None] * len(rows) if task_scores is None else task_scores
    outs = [RowOut(r, p, evaluator, date, t) for r, p, t in zip(rows, prompts, scores, strict=True)]
    return {c.name: [c.value(o) for o in outs] for c in OUTPUT_COLUMNS}


def output_features() -> dict[str, Any]:
    """The datasets feature of every column of OUTPUT_COLUMNS."""
    return {c.name: c.feature for c in OUTPUT_COLUMNS}
