"""Task metrics: answers checked against the reference by a rule, not judged by resemblance.

Chosen with `task_metric`; each row gets a `task_score` on the judge's 0-100 scale, and the
dataset gets summary.json's `task_metric` block (mean, 95% CI, n, threshold, met). The
semantics, each one a number users act on, so spelled out:

- `exact_match`: both texts are normalised (strip, casefold, whitespace runs -> one space,
  every trailing `.`, `!`, `?` dropped) and compared; 100 or 0. With `answer_pattern`, the
  candidate's answer is the first group of the pattern's first match (the whole match when the
  pattern has no group); a candidate the pattern does not match has no answer and scores 0, as
  lm-evaluation-harness' regex filter does ("[invalid]"). The pattern is applied to the
  reference too, but only where it matches there: a bare reference ("Paris") stays as it is.
- `choice`: a closed label set (`labels`, or the distinct reference answers). A reply is right
  when exactly one label occurs in it (case-insensitive, whole word: no letter, digit, `_` or
  `-` on either side; a label inside a longer label's occurrence does not count) and it is the
  reference's label. The reference's label: the label it equals (normalised as for
  exact_match), else the single label it contains. `answer_pattern` narrows both texts as for
  exact_match (a reply it does not match is searched whole). Accuracy is the metric; macro-F1
  and a confusion matrix are reported beside it.
- `json_match`: the reply parses as a JSON object, bare or in a ``` fence (```json or plain;
  the first fence holding an object); the row score is the share of the reference object's
  keys whose values are equal: strings after strip + casefold (also inside nested lists and
  objects), numbers by value (True is not 1), the rest by equality. An unparsable reply scores
  0 and is counted apart (`unparsable`). The reference is the JSON in the target response.
- `token_f1`: SQuAD's F1 (lowercase, punctuation and the articles a/an/the dropped, whitespace
  tokens; two empty answers score 100, one empty answer 0). `answer_pattern` applies as above.
- `rouge_l`: ROUGE-L F-measure of rouge-score (its default tokenizer, no stemmer), x 100.
- `unit_tests`: the execution check of llamaduo.judging.code_eval (needs `allow_code_execution`
  and a `test` column); a tested row scores 100 when it passes, else 0; the metric is pass@1
  over prompts.

Intervals (95%): shares (exact_match, choice, unit_tests) use the Wilson score interval, never
the normal approximation (it collapses to [0, 0] at 0/n); means of bounded scores (json_match,
token_f1, rouge_l) use the Student-t interval over rows, clipped to 0-100, as the judge's
scores do. Every check of a metric's inputs raises UsageError (exit 2) before any model load
or judge call (`check_settings`, then `prepare` on the loaded rows).
"""
from __future__ import annotations

import json
import math
import re
import statistics
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from llamaduo.errors import UsageError
from llamaduo.judging.aggregate import criterion, mean_ci95, wilson_ci95
from llamaduo.judging.contract import PROMPT_FIELDS
from llamaduo.judging.passk import average_ranks, judge_agreement

EXACT_MATCH, CHOICE, JSON_MATCH, TOKEN_F1, ROUGE_L, UNIT_TESTS = (
    "exact_match", "choice", "json_match", "token_f1", "rouge_l", "unit_tests")
#: Every metric, with what it is for (the --help text and docs/evaluation.md's table).
METRICS = {
    EXACT_MATCH: "closed QA with one short answer",
    CHOICE: "classification into a closed label set",
    JSON_MATCH: "structured extraction into a JSON object",
    TOKEN_F1: "short free-text answers (SQuAD-style)",
    ROUGE_L: "summarization",
    UNIT_TESTS: "code, run against the rows' `test` column",
}
#: Metrics whose row score is right/wrong: their mean is a share, with a Wilson interval.
SHARES = (EXACT_MATCH, CHOICE, UNIT_TESTS)
#: Metrics that read an answer out of a longer reply with `answer_pattern`.
PATTERN_METRICS = (EXACT_MATCH, CHOICE, TOKEN_F1)
REFERENCE_COLUMN = PROMPT_FIELDS["human_response"]
CANDIDATE_COLUMN = PROMPT_FIELDS["lm_response"]
NO_LABEL = "(no single label)"  # the confusion matrix's column for replies with 0 or >1 labels
LISTED_ROWS = 10


@dataclass(frozen=True)
class MetricSettings:
    """The evaluation keys of the task metric."""

    name: Optional[str] = None
    threshold: Optional[float] = None
    labels: tuple[str, ...] = ()
    answer_pattern: Optional[str] = None


# --------------------------------------------------------------------------- text rules


_TRAILING = re.compile(r"[\s.!?]+$")


def normalize(text: Any) -> str:
    """exact_match's normal form: strip, casefold, one space per whitespace run, and every
    trailing `.`/`!`/`?` dropped ("Paris!!" and " paris " are the same answer)."""
    return _TRAILING.sub("", " ".join(str(text or "").split()).casefold())


def compile_pattern(pattern: Optional[str]) -> Optional[re.Pattern]:
    """`answer_pattern` compiled; a bad regex is a UsageError naming re's reason."""
    if pattern is None or pattern == "":
        return None
    try:
        return re.compile(pattern)
    except re.error as err:
        raise UsageError(f"answer_pattern {pattern!r} is not a valid regular expression: {err}") from None


def extract(text: str, pattern: Optional[re.Pattern]) -> Optional[str]:
    """The answer the pattern reads out of `text`: the first group of the first match that took
    part in it (the whole match when no group did, or the pattern has none); None when the
    pattern does not match. Without a pattern: the text itself."""
    if pattern is None:
        return text
    m = pattern.search(text)
    if m is None:
        return None
    return next((g for g in m.groups() if g is not None), m.group(0))


def reference_answer(text: str, pattern: Optional[re.Pattern]) -> str:
    """The reference's answer: the pattern's extraction where it matches, else the whole text."""
    got = extract(text, pattern)
    return text if got is None else got


def exact_match(candidate: str, reference: str, pattern: Optional[re.Pattern] = None) -> float:
    """100 when the (extracted) candidate equals the reference after `normalize`, else 0."""
    answer = extract(str(candidate or ""), pattern)
    if answer is None:
        return 0.0
    return 100.0 if normalize(answer) == normalize(reference_answer(str(reference or ""), pattern)) else 0.0


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def squad_normalize(text: str) -> str:
    """SQuAD's normalize_answer: lowercase, drop punctuation, drop articles, fix whitespace
    (the order of the official script)."""
    text = "".join(ch for ch in str(text or "").lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(candidate: str, reference: str, pattern: Optional[re.Pattern] = None) -> float:
    """SQuAD F1 x 100 of the (extracted) candidate against the reference (the official v2
    script's rule for empty answers: both empty 100, one empty 0). Hand-written (a few lines)
    because the `evaluate` package's squad metric needs a download."""
    answer = extract(str(candidate or ""), pattern) or ""
    pred = squad_normalize(answer).split()
    gold = squad_normalize(reference_answer(str(reference or ""), pattern)).split()
    if not pred or not gold:
        return 100.0 if pred == gold else 0.0
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 100.0 * 2 * precision * recall / (precision + recall)


def rouge_l(candidates: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure x 100 per pair (rouge-score's default tokenizer, no stemmer: the
    settings the reference judge uses for its precision)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [100.0 * scorer.score(str(r or ""), str(c or ""))["rougeL"].fmeasure
            for c, r in zip(candidates, references)]


# --------------------------------------------------------------------------- choice


def _label_regex(label: str) -> re.Pattern:
    """A label as a whole word, case-insensitive: no word character or hyphen on either side
    (lookarounds, not \\b, so labels that start or end with a non-word character, or contain
    spaces or hyphens, still match); any whitespace run between its words."""
    words = [re.escape(w) for w in label.split()]
    return re.compile(r"(?<![\w-])" + r"\s+".join(words) + r"(?![\w-])", re.IGNORECASE)


class LabelSet:
    """A closed label set and how to find its labels in a text."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        self._regexes = [(lab, _label_regex(lab)) for lab in self.labels]

    def found(self, text: str) -> list[str]:
        """The distinct labels occurring in `text`, leaving out an occurrence that lies inside
        a longer label's occurrence ("very positive" is not also "positive")."""
        spans = [(m.start(), m.end(), lab) for lab, rx in self._regexes for m in rx.finditer(text)]
        kept = {lab for s, e, lab in spans
                if not any(s2 <= s and e <= e2 and (e2 - s2) > (e - s) for s2, e2, _ in spans)}
        return [lab for lab in self.labels if lab in kept]

    def equal(self, text: str) -> Optional[str]:
        """The label `text` is (normalised as for exact_match), if any."""
        norm = normalize(text)
        return next((lab for lab in self.labels if normalize(lab) == norm), None)

    def predict(self, reply: str) -> Optional[str]:
        """The reply's label: the single label it contains, else None (none, or several)."""
        found = self.found(reply)
        return found[0] if len(found) == 1 else None


def derive_labels(references: Sequence[str], pattern: Optional[re.Pattern]) -> list[str]:
    """The distinct reference answers, in first-seen order, one per normal form (the first
    spelling kept, without trailing `.!?` and surrounding whitespace)."""
    labels: dict[str, str] = {}
    for ref in references:
        answer = reference_answer(str(ref or ""), pattern)
        labels.setdefault(normalize(answer), _TRAILING.sub("", " ".join(answer.split())))
    return [lab for norm, lab in labels.items() if norm]


def macro_f1(golds: Sequence[str], preds: Sequence[Optional[str]]) -> Optional[float]:
    """Macro-averaged F1 (x 100) over the labels that occur as a reference or a prediction
    (as scikit-learn's default); a reply with no single label is wrong for its reference's
    label and predicts nothing. Per label, F1 is 0 when it has no true positive."""
    classes = list(dict.fromkeys([*golds, *(p for p in preds if p is not None)]))
    if not classes:
        return None
    f1s = []
    for lab in classes:
        tp = sum(1 for g, p in zip(golds, preds) if g == lab and p == lab)
        n_pred = sum(1 for p in preds if p == lab)
        n_gold = sum(1 for g in golds if g == lab)
        f1s.append(0.0 if tp == 0 else 2 * tp / (n_pred + n_gold))
    return 100.0 * statistics.fmean(f1s)


def confusion(golds: Sequence[str], preds: Sequence[Optional[str]], labels: Sequence[str]) -> dict[str, dict[str, int]]:
    """{reference label: {predicted label or NO_LABEL: rows}} over every label of the set."""
    table = {g: {p: 0 for p in [*labels, NO_LABEL]} for g in labels}
    for g, p in zip(golds, preds):
        table[g][p if p is not None else NO_LABEL] += 1
    return table


# --------------------------------------------------------------------------- json_match


#: A fence and its language tag; a fence cut off by max_new_tokens runs to the end of the reply.
_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)


def parse_json_object(text: Any) -> Optional[dict]:
    """The JSON object a reply holds: the whole reply, or the first ``` fence (```json or
    plain; an unclosed one runs to the end) that holds one; None when neither does. Prose around a bare object is not parsed:
    a reply meant for a program must be the object (or fence it)."""
    text = str(text or "").strip()
    candidates = [text] + [m.group(2) for m in _FENCE.finditer(text) if m.group(1).lower() in ("", "json")]
    for chunk in candidates:
        try:
            obj = json.loads(chunk)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _canon(value: Any) -> Any:
    """A value in comparable form: strings stripped and casefolded, also inside lists and
    objects; bools tagged so that True never equals 1."""
    if isinstance(value, str):
        return value.strip().casefold()
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canon(v) for v in value]
    return value


def json_match(reply: Optional[dict], reference: dict) -> float:
    """100 x the share of the reference's keys whose values the reply has equal; an
    unparsable reply (None) 0; an empty reference object is matched by any object."""
    if reply is None:
        return 0.0
    if not reference:
        return 100.0
    same = sum(1 for k, v in reference.items() if k in reply and _canon(reply[k]) == _canon(v))
    return 100.0 * same / len(reference)


# --------------------------------------------------------------------------- checks and scoring


def check_settings(s: MetricSettings, *, allow_low_threshold: bool = False) -> None:
    """The key-level checks (UsageError, exit 2), before any data is loaded."""
    if s.name is not None and s.name not in METRICS:
        raise UsageError(f"unknown task_metric '{s.name}' (choose one of: {', '.join(METRICS)})")
    if s.threshold is not None:
        if s.name is None:
            raise UsageError("task_metric_threshold is set but task_metric is not: name the metric it is a bar for")
        if not (isinstance(s.threshold, (int, float)) and math.isfinite(s.threshold) and 0 <= s.threshold <= 100):
            raise UsageError(f"task_metric_threshold must be within 0-100 (the metric's scale), got {s.threshold}")
        if 0 < s.threshold <= 1 and not allow_low_threshold:
            raise UsageError(f"task_metric_threshold={s.threshold:g} is on the 0-100 scale: did you mean "
                             f"{s.threshold * 100:g}? (set allow_low_threshold: true to keep it)")
    if s.labels and s.name != CHOICE:
        raise UsageError(f"labels is set but task_metric is {s.name or 'unset'}: labels are the closed set of "
                         f"the `choice` metric")
    if s.labels and any(not str(lab).strip() for lab in s.labels):
        raise UsageError("labels must be non-empty strings")
    if s.labels and len({normalize(lab) for lab in s.labels}) < len(s.labels):
        raise UsageError(f"labels repeat a label (compared case-insensitively): {list(s.labels)}")
    if s.answer_pattern:
        if s.name not in PATTERN_METRICS:
            raise UsageError(f"answer_pattern applies to {', '.join(PATTERN_METRICS)}; task_metric is "
                             f"{s.name or 'unset'}")
        compile_pattern(s.answer_pattern)


@dataclass
class Prepared:
    """A metric ready to score: its settings and what was read from the references."""

    settings: MetricSettings
    pattern: Optional[re.Pattern] = None
    labels: Optional[LabelSet] = None
    gold_labels: list[str] = field(default_factory=list)
    gold_objects: list[dict] = field(default_factory=list)


def _where(i: int) -> str:
    return f"row {i}"


def prepare(s: MetricSettings, references: Sequence[Any], column_names: Sequence[str],
            source: str, *, has_tests: bool) -> Prepared:
    """Check the metric's inputs in the loaded rows (UsageError, exit 2, before any judge or
    model work) and read what scoring needs out of the references."""
    refs = [str(r or "") for r in references]
    prep = Prepared(s, pattern=compile_pattern(s.answer_pattern))
    if s.name == UNIT_TESTS and not has_tests:
        raise UsageError(f"task_metric unit_tests needs a 'test' column, and {source} has none "
                         f"(columns: {', '.join(column_names)}); see docs/evaluation.md")
    if s.name == JSON_MATCH:
        for i, ref in enumerate(refs):
            obj = parse_json_object(ref)
            if obj is None:
                raise UsageError(f"task_metric json_match needs a JSON object as every reference answer "
                                 f"('{REFERENCE_COLUMN}'), bare or in a ```json fence; {_where(i)} of {source} "
                                 f"has none: {ref[:80]!r}")
            prep.gold_objects.append(obj)
    if s.name == CHOICE:
        labels = list(s.labels) or derive_labels(refs, prep.pattern)
        if len(labels) < 2:
            raise UsageError(f"task_metric choice needs at least 2 labels: set `labels`, or give references "
                             f"with at least 2 distinct answers (found {labels} in {source})")
        prep.labels = LabelSet(labels)
        for i, ref in enumerate(refs):
            answer = reference_answer(ref, prep.pattern)
            gold = prep.labels.equal(answer) or prep.labels.predict(answer)
            if gold is None:
                raise UsageError(f"task_metric choice: the reference of {_where(i)} of {source} is not one of "
                                 f"the labels {labels} (nor contains exactly one): {ref[:80]!r}")
            prep.gold_labels.append(gold)
    return prep


@dataclass
class MetricResult:
    """Per-row scores (None: not scored, e.g. an untested row) and the summary extras."""

    scores: list[Optional[float]]
    extra: dict[str, Any] = field(default_factory=dict)
    predictions: Optional[list[Optional[str]]] = None


def score_rows(prep: Prepared, candidates: Sequence[Any], references: Sequence[Any]) -> MetricResult:
    """Score every row with a metric that runs no code (unit_tests: `unit_test_result`)."""
    name, pattern = prep.settings.name, prep.pattern
    cands = [str(c or "") for c in candidates]
    refs = [str(r or "") for r in references]
    if name == EXACT_MATCH:
        return MetricResult([exact_match(c, r, pattern) for c, r in zip(cands, refs)])
    if name == TOKEN_F1:
        return MetricResult([token_f1(c, r, pattern) for c, r in zip(cands, refs)])
    if name == ROUGE_L:
        return MetricResult(rouge_l(cands, refs))
    if name == JSON_MATCH:
        parsed = [parse_json_object(c) for c in cands]
        return MetricResult([json_match(p, g) for p, g in zip(parsed, prep.gold_objects)],
                            {"unparsable": sum(1 for p in parsed if p is None)})
    if name == CHOICE:
        assert prep.labels is not None
        preds = []
        for c in cands:
            answer = extract(c, pattern)
            preds.append(prep.labels.predict(c if answer is None else answer))
        golds = prep.gold_labels
        f1 = macro_f1(golds, preds)
        return MetricResult(
            [100.0 if p == g else 0.0 for p, g in zip(preds, golds)],
            {"labels": prep.labels.labels, "macro_f1": None if f1 is None else round(f1, 4),
             "no_single_label": sum(1 for p in preds if p is None),
             "confusion": confusion(golds, preds, prep.labels.labels)},
            predictions=preds)
    raise ValueError(f"score_rows does not run {name}")


def unit_test_result(passed: Sequence[Optional[bool]], keys: Sequence[str]) -> tuple[MetricResult, float | None, int]:
    """unit_tests from code_eval's per-row `passed`: row scores 100/0 (None untested), and the
    metric = pass@1 over prompts (the mean of each prompt's share), with its prompt count."""
    groups: dict[str, list[bool]] = {}
    for k, p in zip(keys, passed):
        if p is not None:
            groups.setdefault(k, []).append(bool(p))
    shares = [sum(v) / len(v) for v in groups.values()]
    mean = 100.0 * statistics.fmean(shares) if shares else None
    scores = [None if p is None else (100.0 if p else 0.0) for p in passed]
    return MetricResult(scores), mean, len(shares)


# --------------------------------------------------------------------------- the summary block


def _r(x: Optional[float], nd: int = 4) -> Optional[float]:
    return None if x is None else round(float(x), nd)


def _pearson(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:  # fewer than 2 points, or a constant series
        return None


def judge_correlation(metric: Sequence[Optional[float]], judge: dict[str, Sequence[Optional[float]]]) -> Optional[dict]:
    """For a continuous metric: Pearson and Spearman correlation of each judge score with the
    task score, over rows that have both (statistics.correlation; Spearman = Pearson of the
    ranks, since Python 3.11's statistics has no ranked method and scipy.stats costs seconds)."""
    out: dict[str, Any] = {}
    for name, vals in judge.items():
        both = [i for i, (m, v) in enumerate(zip(metric, vals)) if m is not None and v is not None]
        xs, ys = [float(metric[i]) for i in both], [float(vals[i]) for i in both]
        out["rows"] = len(both)
        out[name] = {"pearson": _r(_pearson(xs, ys)), "spearman": _r(_pearson(average_ranks(xs), average_ranks(ys)))}
    return out if out.get("rows") else None


def summary_block(s: MetricSettings, result: MetricResult, *, mean: Optional[float] = None,
                  n: Optional[int] = None, agreement: Optional[dict] = None) -> tuple[dict, Optional[dict]]:
    """summary.json's `task_metric` object and the verdict criterion (None without a bar).

    `mean`/`n` override the row mean and row count (unit_tests: pass@1 over prompts)."""
    vals = [v for v in result.scores if v is not None]
    if mean is None and vals:
        mean = statistics.fmean(vals)
    n = len(vals) if n is None else n
    if s.name in SHARES:
        ci, method = (wilson_ci95(mean / 100.0, n) if mean is not None else None), "wilson"
    else:
        ci, method = mean_ci95(vals)[1], "student-t"
    crit = None if s.threshold is None else criterion(s.name, mean, s.threshold)
    block = {"name": s.name, "mean": _r(mean), "ci_low": _r(ci[0]) if ci else None,
             "ci_high": _r(ci[1]) if ci else None, "n": n, "threshold": s.threshold,
             "met": None if crit is None else crit["passed"], "ci_method": method,
             "answer_pattern": s.answer_pattern or None, **result.extra, "agreement": agreement}
    return block, crit


def agreement(s: MetricSettings, scores: Sequence[Optional[float]], judge: dict[str, Sequence[Optional[float]]],
              judge_thresholds: dict[str, float]) -> Optional[dict]:
    """Judge vs metric: for a right/wrong metric, the judge's mean score on right vs wrong rows,
    its AUC for predicting "right", and the rows the judge passed that are wrong (the pass@1
    statistics of passk, with "passing" = right); for a continuous metric, correlations."""
    if s.name in SHARES:
        right = [None if v is None else v >= 50.0 for v in scores]
        return judge_agreement(right, judge, judge_thresholds)
    return judge_correlation(scores, judge)
