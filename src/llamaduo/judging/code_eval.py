"""Execution-based evaluation: run each answer's code against the row's unit test.

Wired into evaluation.py by three calls: `check_execution_args` (exit 2 before any model load
or paid call: a `test` column without `allow_code_execution`), `evaluate_code` (after the
judge: per-row columns and the `execution` object of summary.json), and `execution_lines` /
`execution_report` (the one-screen summary and report.md). The sandbox is llamaduo.sandbox.

Test shapes (per row): HumanEval-style, where `test` defines `check(candidate)` and the
`entry_point` column names the function to pass to it; or plain statements (`assert f(2) == 4`)
run after the candidate's code in the same namespace. A row with an empty test is untested.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from datasets import Dataset, Value

from llamaduo.errors import UsageError
from llamaduo.judging.aggregate import criterion
from llamaduo.judging.passk import group_results, judge_agreement, pass_rate_stats
from llamaduo.redact import mask_secrets
from llamaduo.sandbox import ExecJob, IsolationUnavailable, SandboxLimits, extract_code, resolve_isolation, run_many

logger = logging.getLogger("llamaduo.evaluation")

TEST_COLUMN = "test"
ENTRY_POINT_COLUMN = "entry_point"
EXEC_FEATURES = {"passed": Value("bool"), "exec_reason": Value("string"), "pass_at_1": Value("float64")}
LISTED_FAILURES = 10


@dataclass(frozen=True)
class ExecSettings:
    """The evaluation keys that drive execution."""

    allowed: bool
    pass_rate_threshold: Optional[float]
    timeout_s: float
    memory_mb: int
    workers: int
    isolation: str = "auto"


def has_tests(column_names: Sequence[str]) -> bool:
    return TEST_COLUMN in column_names


def check_execution_args(column_names: Sequence[str], settings: ExecSettings, source: str) -> None:
    """Exit 2 up front: running model-written code needs explicit consent (as Hugging Face
    `evaluate`'s code_eval does), and a pass-rate bar needs tests to measure it."""
    if settings.pass_rate_threshold is not None and not 0 <= settings.pass_rate_threshold <= 100:
        raise UsageError(f"pass_rate_threshold must be within 0-100 (a percentage), "
                         f"got {settings.pass_rate_threshold:g}")
    if settings.timeout_s <= 0 or settings.memory_mb < 64 or settings.workers < 0:
        raise UsageError("execution_timeout_s must be > 0, execution_memory_mb >= 64 and "
                         "execution_workers >= 0")
    if not has_tests(column_names):
        if settings.pass_rate_threshold is not None:
            raise UsageError(f"pass_rate_threshold is set but {source} has no '{TEST_COLUMN}' column to "
                             f"measure a pass rate with; unset it or add the tests (see docs/evaluation.md)")
        if settings.allowed:  # consent given, but nothing to run: say so rather than report no pass@1 silently
            logger.warning("allow_code_execution is set but %s has no '%s' column: no answer is run and "
                           "pass@1 is not measured (batch_inference carries the test split's '%s' column "
                           "when it has one)", source, TEST_COLUMN, TEST_COLUMN)
        return
    if not settings.allowed:
        raise UsageError(
            f"{source} has a '{TEST_COLUMN}' column: evaluation would run the model-written code "
            f"against it. That needs your consent: set allow_code_execution: true in the config "
            f"(or pass --allow_code_execution). It runs in a kernel sandbox (bubblewrap), with limits "
            f"(docs/evaluation.md, 'The safety model').")
    check_isolation(settings.isolation)


def check_isolation(isolation: str) -> None:
    """Exit 2 when no kernel sandbox can be had (unless isolation none is chosen by name), and
    warn on every run that chooses none: model-written code then runs with the evaluation's
    own rights, files and network."""
    try:
        used = resolve_isolation(isolation)
    except (IsolationUnavailable, ValueError) as err:
        raise UsageError(str(err)) from None
    if used == "none":
        logger.warning("UNSAFE: execution_isolation is none: model-written code runs without a kernel "
                       "sandbox (it can read your files and secrets, reach the network and kill processes); "
                       "use it only for code you trust")


def _jobs(ds: Dataset) -> tuple[list[ExecJob], list[bool]]:
    tests = [str(t or "") for t in ds[TEST_COLUMN]]
    entries = (ds[ENTRY_POINT_COLUMN] if ENTRY_POINT_COLUMN in ds.column_names else [None] * len(ds))
    answers = [str(a or "") for a in ds["candidate_responses"]]
    tested = [bool(t.strip()) for t in tests]
    jobs = [ExecJob(extract_code(a), t, str(e) if e else None) for a, t, e in zip(answers, tests, entries)]
    return jobs, tested


def _prompt_keys(ds: Dataset) -> list[str]:
    """Samples of one prompt share its prompt_id (batch_inference `repeat`); else its text."""
    col = "prompt_id" if "prompt_id" in ds.column_names else "instructions"
    return [str(k) for k in ds[col]]


def evaluate_code(ds: Dataset, settings: ExecSettings, judge_scores: dict[str, Sequence[Optional[float]]],
                  judge_thresholds: dict[str, float]) -> tuple[dict[str, list], dict, Optional[dict]]:
    """Run every tested row; return (per-row columns, summary.json's `execution` object, the
    pass-rate criterion for summary["criteria"] or None when no pass_rate_threshold is set)."""
    jobs, tested = _jobs(ds)
    todo = [i for i, t in enumerate(tested) if t]
    limits = SandboxLimits(timeout_s=settings.timeout_s, memory_mb=settings.memory_mb,
                           isolation=settings.isolation)
    logger.info("running %d answers against their tests (isolation %s, timeout %gs, %d MB)",
                len(todo), resolve_isolation(settings.isolation), settings.timeout_s, settings.memory_mb)
    results = run_many([jobs[i] for i in todo], limits, workers=settings.workers)
    passed: list[Optional[bool]] = [None] * len(ds)
    reasons: list[Optional[str]] = ["no test"] * len(ds)
    for i, res in zip(todo, results):  # a reason quotes the candidate's text: mask any key it holds
        passed[i], reasons[i] = res.passed, mask_secrets(res.reason)
    keys = _prompt_keys(ds)
    groups = group_results(keys, passed)
    per_prompt = {k: sum(v) / len(v) for k, v in groups.items()}
    columns = {"passed": passed, "exec_reason": reasons,
               "pass_at_1": [per_prompt.get(k) if p is not None else None for k, p in zip(keys, passed)]}
    summary = {"rows": len(todo), "passed": sum(1 for p in passed if p), "untested_rows": len(ds) - len(todo),
               **pass_rate_stats(groups),
               "pass_rate_threshold": settings.pass_rate_threshold,
               "failure_reasons": _reason_counts(reasons, passed),
               "timeout_s": settings.timeout_s, "memory_mb": settings.memory_mb,
               "isolation": resolve_isolation(settings.isolation),
               "agreement": judge_agreement(passed, judge_scores, judge_thresholds)}
    crit = None
    if settings.pass_rate_threshold is not None:
        # compare the unrounded rate: 34.99996 must not round its way to a pass at 35
        raw = 100 * sum(per_prompt.values()) / len(per_prompt) if per_prompt else None
        crit = criterion("pass@1 % (unit tests)", raw, settings.pass_rate_threshold)
    summary["qualified"] = None if crit is None else crit["passed"]
    return columns, summary, crit


def _reason_counts(reasons: Sequence[Optional[str]], passed: Sequence[Optional[bool]]) -> dict[str, int]:
    """Failure kinds (the reason up to its first colon), most common first."""
    kinds = Counter(str(r).split(":")[0] for r, p in zip(reasons, passed) if p is False)
    return dict(kinds.most_common())


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.1f}%"


def execution_lines(summary: dict) -> list[str]:
    """Lines for the one-screen summary and the head of report.md (none without tests)."""
    ex = summary.get("execution")
    if not ex:
        return []
    ci = ex.get("pass_rate_ci95")
    bar = ex.get("pass_rate_threshold")
    lines = [f"pass@1 (unit tests): {_pct(ex['pass_rate'])} ({ex['passed']}/{ex['rows']} rows passed, "
             f"{ex['prompts']} prompts)  95% CI {'n/a' if not ci else f'[{ci[0]:.1f}, {ci[1]:.1f}]'}"
             + ("" if bar is None else f"  threshold >= {bar:g}: {'met' if ex['qualified'] else 'not met'}")]
    ag = ex.get("agreement")
    if ag:
        parts = [f"{name} AUC {_fmt(ag[name]['auc'], 2)}" for name in ("similarity", "precision") if name in ag]
        lines.append(f"judge vs tests: {', '.join(parts)}; judge passed but tests failed: "
                     f"{ag['judge_pass_test_fail']['count']} of {ag['rows']} rows")
    return lines


def _samples(ex: dict) -> str:
    low, high = ex.get("samples_per_prompt") or ("?", "?")
    return str(low) if low == high else f"{low}-{high}"


def _fmt(x: Any, nd: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def execution_report(summary: dict, rows: Sequence[dict]) -> list[str]:
    """The report.md section: pass@k, failure kinds, judge agreement, and the rows the judge
    passed that fail their tests (the ones a user most needs to see)."""
    ex = summary.get("execution")
    if not ex:
        return []
    out = ["## Unit tests (execution)", "", *[f"- {line}" for line in execution_lines(summary)],
           f"- pass@k (unbiased estimator over {_samples(ex)} sample(s) per prompt): "
           + (", ".join(f"pass@{k} {100 * v:.1f}%" for k, v in ex["pass_at_k"].items()) or "n/a"),
           f"- failure kinds: " + (", ".join(f"{k} ({n})" for k, n in ex["failure_reasons"].items()) or "none"),
           f"- limits per run: {ex['timeout_s']:g} s wall clock, {ex['memory_mb']} MB address space; "
           f"isolation: {ex.get('isolation', 'bwrap')}", ""]
    ag = ex.get("agreement")
    if ag:
        out += ["| judge score | mean on passing rows | mean on failing rows | AUC (predicting a pass) |",
                "|---|---|---|---|"]
        for name in ("similarity", "precision"):
            if name in ag:
                s = ag[name]
                out.append(f"| {name} | {_fmt(s['mean_passing'])} | {_fmt(s['mean_failing'])} | {_fmt(s['auc'], 3)} |")
        out += ["", "AUC 0.5 means the judge's score says nothing about whether the code works; 1.0 means "
                "every passing row outscored every failing one.", ""]
        fooled = ag["judge_pass_test_fail"]["rows"]
        if fooled:
            out += [f"### Rows the judge passed that fail their tests ({ag['judge_pass_test_fail']['count']})", ""]
            for i in fooled[:LISTED_FAILURES]:
                r = rows[i]
                instr = " ".join(str(r.get("instructions") or "").split())[:80]
                out.append(f"- row {i} `{instr}`: {r.get('exec_reason')}")
            out.append("")
    return out
