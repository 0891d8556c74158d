"""The task metric's lines in the one-screen summary and its section of report.md.

Pure functions of summary.json's `task_metric` object and the output rows (column
`task_score`), like llamaduo.judging.report, so the section can be rebuilt without rescoring.
"""
from __future__ import annotations

from typing import Any, Sequence

LOWEST_ROWS = 5
CI_METHODS = {"wilson": "the Wilson score interval of a share (honest at 0/n and n/n)",
              "student-t": "the Student-t interval over rows, clipped to 0-100"}


def _fmt(x: Any, nd: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def _ci(tm: dict) -> str:
    if tm.get("ci_low") is None:
        return "n/a"
    return f"[{tm['ci_low']:.1f}, {tm['ci_high']:.1f}]"


def task_metric_lines(summary: dict) -> list[str]:
    """Lines for the one-screen summary and the head of report.md (none without a metric)."""
    tm = summary.get("task_metric")
    if not tm:
        return []
    bar = tm.get("threshold")
    line = (f"task metric {tm['name']}: {_fmt(tm['mean'])}  95% CI {_ci(tm)} ({tm['ci_method']}, n={tm['n']})"
            + ("" if bar is None else f"  threshold >= {bar:g}: {'met' if tm['met'] else 'not met'}"))
    lines = [line]
    if "unparsable" in tm:
        lines.append(f"json_match: {tm['unparsable']} of {tm['n']} replies are not a JSON object (scored 0)")
    if "macro_f1" in tm:
        lines.append(f"choice: macro-F1 {_fmt(tm['macro_f1'])}; {tm['no_single_label']} of {tm['n']} replies "
                     f"name no single label; labels: {', '.join(tm['labels'])}")
    ag = tm.get("agreement")
    if ag and "judge_pass_test_fail" in ag:
        parts = [f"{name} AUC {_fmt(ag[name]['auc'], 2)}" for name in ("similarity", "precision") if name in ag]
        lines.append(f"judge vs {tm['name']}: {', '.join(parts)}; judge passed but the answer is wrong: "
                     f"{ag['judge_pass_test_fail']['count']} of {ag['rows']} rows")
    elif ag:
        parts = [f"{name} Spearman {_fmt(ag[name]['spearman'], 2)}" for name in ("similarity", "precision")
                 if name in ag]
        lines.append(f"judge vs {tm['name']}: {', '.join(parts)} over {ag['rows']} rows")
    return lines


def _confusion(tm: dict) -> list[str]:
    table = tm.get("confusion") or {}
    if not table:
        return []
    cols = list(next(iter(table.values())))
    out = ["### Confusion matrix (rows: reference label, columns: the reply's label)", "",
           "| reference \\ reply | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for gold, counts in table.items():
        out.append(f"| {gold} | " + " | ".join(str(counts[c]) for c in cols) + " |")
    return out + [""]


def _agreement_table(tm: dict) -> list[str]:
    ag = tm.get("agreement")
    if not ag:
        return []
    if "judge_pass_test_fail" in ag:
        out = [f"| judge score | mean on right rows | mean on wrong rows | AUC (predicting right) |",
               "|---|---|---|---|"]
        for name in ("similarity", "precision"):
            if name in ag:
                s = ag[name]
                out.append(f"| {name} | {_fmt(s['mean_passing'])} | {_fmt(s['mean_failing'])} | {_fmt(s['auc'], 3)} |")
        return out + ["", f"The judge passed {ag['judge_pass_test_fail']['count']} of {ag['rows']} rows whose "
                      f"answer {tm['name']} counts wrong. AUC 0.5: the judge's score says nothing about "
                      "correctness; 1.0: every right row outscored every wrong one.", ""]
    out = ["| judge score | Pearson r with task_score | Spearman rho |", "|---|---|---|"]
    for name in ("similarity", "precision"):
        if name in ag:
            out.append(f"| {name} | {_fmt(ag[name]['pearson'], 3)} | {_fmt(ag[name]['spearman'], 3)} |")
    return out + ["", f"Over the {ag['rows']} rows that have both scores.", ""]


def _one_line(text: Any, n: int) -> str:
    s = " ".join(str(text or "").split())
    return (s if len(s) <= n else s[:n] + " …").replace("|", "\\|").replace("`", "'")


def lowest_rows(rows: Sequence[dict], k: int = LOWEST_ROWS) -> list[tuple[int, dict]]:
    """The k rows with the lowest task_score below 100 (ties: row order), with their indices."""
    scored = [(i, r) for i, r in enumerate(rows) if r.get("task_score") is not None and r["task_score"] < 100]
    return sorted(scored, key=lambda ir: ir[1]["task_score"])[:k]


def task_report(summary: dict, rows: Sequence[dict]) -> list[str]:
    """The report.md section: the metric with its CI and bar, judge-vs-metric agreement, the
    confusion matrix (choice), and the lowest-scored rows."""
    tm = summary.get("task_metric")
    if not tm:
        return []
    out = [f"## Task metric: {tm['name']}", "", *[f"- {line}" for line in task_metric_lines(summary)]]
    if tm.get("answer_pattern"):
        out.append(f"- answer_pattern: `{tm['answer_pattern']}`")
    out += [f"- 95% CI: {CI_METHODS.get(tm['ci_method'], tm['ci_method'])}", ""]
    out += _agreement_table(tm) + _confusion(tm)
    low = lowest_rows(rows)
    if low:
        out += [f"### The {len(low)} lowest-scored rows", "", "| row | task_score | reference | reply |",
                "|---|---|---|---|"]
        out += [f"| {i} | {_fmt(r['task_score'])} | {_one_line(r.get('target_responses'), 80)} | "
                f"{_one_line(r.get('candidate_responses'), 120)} |" for i, r in low]
        out.append("")
    return out
