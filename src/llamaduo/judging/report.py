"""The human side of an evaluation: histogram PNG, report.md, and the one-screen summary.

Everything here is a pure function of the summary dict and the scored rows, so the report
can be rebuilt from `summary.json` + the output dataset without re-judging anything.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from llamaduo.judging.code_eval import execution_lines
from llamaduo.judging.task_report import task_metric_lines
from llamaduo.judging.truncation import is_cut, truncation_line

HISTOGRAM_NAME = "scores_histogram.png"
WORST_ROWS = 5


def _fmt(x: Any, nd: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def _fmt_ci(ci: Sequence[float] | None) -> str:
    return "n/a (fewer than 2 scored rows)" if not ci else f"[{ci[0]:.1f}, {ci[1]:.1f}]"


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def write_histogram(similarity: Sequence[float], precision: Sequence[float], path: Path,
                    thresholds: tuple[float, float] | None = None, title: str = "Evaluation scores") -> Path:
    """Overlaid histograms of the per-row mean scores on a fixed 0-100 axis, so reports
    from different rounds compare at a glance. Uses the Agg backend: no display needed.

    The thresholds bound the *means* over all rows, not single rows, so they are stated in the
    legend beside each mean instead of drawn as lines over the per-row bars (a line there
    reads as "rows left of it fail"). The overlap colour has its own legend entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    bins = list(range(0, 105, 5))
    alpha = 0.5
    ax.hist(list(similarity), bins=bins, alpha=alpha, color="tab:blue")
    ax.hist(list(precision), bins=bins, alpha=alpha, color="tab:orange")
    handles = []
    for name, values, colour, bar in (("similarity", similarity, "tab:blue", thresholds[0] if thresholds else None),
                                      ("precision", precision, "tab:orange", thresholds[1] if thresholds else None)):
        mean = sum(values) / len(values) if values else None
        label = f"{name} per row (mean {_fmt(mean)}" + (f"; the mean must reach {bar:g})" if bar is not None else ")")
        handles.append(Patch(color=colour, alpha=alpha, label=label))
    # what the two translucent bars look like drawn over each other on white: orange over blue
    blue, orange = to_rgba("tab:blue"), to_rgba("tab:orange")
    under = [alpha * blue[i] + (1 - alpha) for i in range(3)]
    over = tuple(alpha * orange[i] + (1 - alpha) * under[i] for i in range(3))
    handles.append(Patch(color=over, label="both (bars overlap)"))
    ax.set_xlim(0, 100)
    ax.set_xlabel("score (mean over repeats, per row)")
    ax.set_ylabel("rows")
    ax.set_title(title, fontsize=10)
    ax.legend(handles=handles, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def histogram_title(summary: dict, output_dir: str | Path | None = None) -> str:
    """"Evaluation scores: <model> (round k), judge <judge>": the round is read from a
    `round_<k>` part of the output path, as the loop writes it."""
    models = ", ".join(str(m) for m in summary.get("model_ids") or []) or "model unknown"
    found = re.search(r"round_(\d+)", str(output_dir or summary.get("output_dir") or ""))
    round_part = f" (round {found.group(1)})" if found else ""
    return f"Evaluation scores: {_clip(models, 60)}{round_part}, judge {summary.get('evaluator', '?')}"


def worst_rows(rows: Sequence[dict], k: int = WORST_ROWS) -> list[dict]:
    """The k scored rows with the lowest mean of similarity and precision (ties: row order)."""
    scored = [r for r in rows if r.get("similarity_scores") is not None]
    return sorted(scored, key=lambda r: (r["similarity_scores"] + r["precision_scores"]) / 2)[:k]


def _clip(text: Any, n: int = 300) -> str:
    s = str(text or "").strip()
    return s if len(s) <= n else s[:n] + " …"


def _fenced(text: str) -> list[str]:
    """A code block whose fence is longer than any backtick run inside the text, so answers
    that contain their own ``` fences render verbatim (CommonMark)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, text, fence]


def _first_reason(reasons: Sequence[str] | None) -> str:
    for r in reasons or []:
        if r:
            return str(r)
    return ""


def _measured(c: dict) -> str:
    """`mean similarity 62.1 < 80 (bar)`: the value beside its bar, with as many decimals as
    it takes for the printed value to agree with the comparison (79.99996 is not "80.0 < 80")."""
    value, bar = c.get("value"), c["bar"]
    if value is None:
        return f"{c['name']} n/a (bar {bar:g})"
    nd = 1
    while nd < 6 and (float(f"{value:.{nd}f}") >= bar) != c["passed"]:
        nd += 1
    return f"{c['name']} {value:.{nd}f} {'>=' if c['passed'] else '<'} {bar:g}{'' if c['passed'] else ' (bar)'}"


def verdict_line(summary: dict) -> str:
    """`verdict: NOT QUALIFIED: mean similarity 62.1 < 80 (bar); mean precision 85.0 >= 80`:
    every criterion's measured value next to its bar, so the line reports a measurement,
    never a statement about the bar alone."""
    verdict = "QUALIFIED" if summary["qualified"] else "NOT QUALIFIED"
    criteria = summary.get("criteria") or []
    if summary.get("judged", True) and not summary.get("scored_rows"):
        return f"verdict: {verdict}: no row was scored"
    if not criteria:
        return f"verdict: {verdict}: no criterion is set"
    return f"verdict: {verdict}: " + "; ".join(_measured(c) for c in criteria)


def summary_lines(summary: dict) -> list[str]:
    """The key numbers, one per line; shared by report.md and the terminal."""
    s = summary
    tokens = s.get("tokens") or {}
    this_run = s.get("this_run") or {}
    if not s.get("judged", True):
        return [verdict_line(s), f"evaluator: {s.get('evaluator', '?')}",
                f"rows: {s['rows']}; no judge (service_llm_provider none): no judge calls, cost $0",
                truncation_line(s)]
    return [
        verdict_line(s),
        f"evaluator: {s.get('evaluator', '?')}",
        f"rows: {s['rows']} (scored {s['scored_rows']}, failed {s['failed_rows']}); "
        f"judgements: {s['judgements']} ({s.get('eval_repeat', '?')} per row), failures {s['failures']} "
        f"({_fmt_pct(s['failure_ratio'])}, max {_fmt_pct(s['max_failure_ratio'])})",
        truncation_line(s),
        f"mean similarity: {_fmt(s['mean_similarity'])}  95% CI {_fmt_ci(s['similarity_ci95'])}  "
        f"coverage(>= {s['coverage_threshold']:g}) {_fmt_pct(s['coverage_similarity'])}  "
        f"mean std over repeats {_fmt(s['mean_std_similarity'], 2)}",
        f"mean precision:  {_fmt(s['mean_precision'])}  95% CI {_fmt_ci(s['precision_ci95'])}  "
        f"coverage(>= {s['coverage_threshold']:g}) {_fmt_pct(s['coverage_precision'])}  "
        f"mean std over repeats {_fmt(s['mean_std_precision'], 2)}",
        f"cost: ${s.get('cost_usd', 0.0):.4f} (this run ${this_run.get('cost_usd', 0.0):.4f}); "
        f"tokens in {tokens.get('input', 0)}, out {tokens.get('output', 0)}; judge calls "
        f"{s.get('calls', 0)} ({s.get('cached_calls', 0)} from the ledger), "
        f"retries {this_run.get('retries', 0)}",
    ]


def one_screen_summary(summary: dict, output_dir: Path | str | None = None) -> str:
    """The block printed at the end of a run."""
    lines = ["=" * 72, "evaluation summary", "-" * 72, *summary_lines(summary), *task_metric_lines(summary),
             *execution_lines(summary)]
    if output_dir is not None:
        histogram = f", {HISTOGRAM_NAME}" if summary.get("judged", True) else ""
        lines.append(f"output: {output_dir} (summary.json, report.md{histogram})")
    lines.append("=" * 72)
    return "\n".join(lines)


def render_report(summary: dict, rows: Sequence[dict], histogram_name: str = HISTOGRAM_NAME) -> str:
    """report.md: the summary, the histogram, the five worst rows with the judge's reasons,
    and the failed rows with their failure reasons."""
    s = summary
    out = ["# Evaluation report", ""]
    out += [f"- {line}" for line in summary_lines(s)]
    if not s.get("judged", True):  # no judge scores: the task metric's section follows
        return "\n".join([*out, f"- input: `{s.get('lm_response_ds_id', '?')}` split "
                                 f"`{s.get('lm_response_ds_split', '?')}`; date: {s.get('date', '?')}", "",
                           *rows_table(rows)])
    out += [
        f"- input: `{s.get('lm_response_ds_id', '?')}` split `{s.get('lm_response_ds_split', '?')}`; "
        f"repeats per row: {s.get('eval_repeat', '?')}; date: {s.get('date', '?')}",
        "",
        "| score | mean | 95% CI | coverage | mean std (repeats) | threshold |",
        "|---|---|---|---|---|---|",
        f"| similarity | {_fmt(s['mean_similarity'])} | {_fmt_ci(s['similarity_ci95'])} | "
        f"{_fmt_pct(s['coverage_similarity'])} | {_fmt(s['mean_std_similarity'], 2)} | "
        f"{s['avg_similarity_threshold']:g} |",
        f"| precision | {_fmt(s['mean_precision'])} | {_fmt_ci(s['precision_ci95'])} | "
        f"{_fmt_pct(s['coverage_precision'])} | {_fmt(s['mean_std_precision'], 2)} | "
        f"{s['avg_precision_threshold']:g} |",
        "",
        f"Coverage is the share of scored rows at or above {s['coverage_threshold']:g}. "
        "The confidence interval is the Student-t interval over per-row means.",
        "",
        f"![score histogram]({histogram_name})",
        "",
        f"## The {WORST_ROWS} worst rows",
        "",
    ]
    worst = worst_rows(rows)
    if not worst:
        out.append("No scored rows.")
    for i, r in enumerate(worst, 1):
        out += [
            f"### {i}. similarity {_fmt(r['similarity_scores'])}, precision {_fmt(r['precision_scores'])}"
            + (" (answer cut at max_new_tokens)" if is_cut(r) else ""),
            "",
            f"**Instruction:** {_clip(r.get('instructions'), 200)}",
            "",
            "**Reference:**", "", *_fenced(_clip(r.get("target_responses"))), "",
            "**Candidate:**", "", *_fenced(_clip(r.get("candidate_responses"))), "",
            f"- similarity reason: {_clip(_first_reason(r.get('similarity_reasons')), 400) or '-'}",
            f"- precision reason: {_clip(_first_reason(r.get('precision_reasons')), 400) or '-'}",
            "",
        ]
    failed = [r for r in rows if r.get("failure_reason")]
    if failed:
        out += ["## Rows with failed judgements", ""]
        for r in failed[:20]:
            out.append(f"- `{_clip(r.get('instructions'), 80)}`: {_clip(r['failure_reason'], 300)}")
        if len(failed) > 20:
            out.append(f"- … and {len(failed) - 20} more (see the `failure_reason` column)")
        out.append("")
    out += rows_table(rows)
    return "\n".join(out)


def rows_table(rows: Sequence[dict]) -> list[str]:
    """Every row on one line, so cut answers (`cut`: yes / no / ? when batch inference did not
    record finish_reason) can be found next to their scores."""
    task = any(r.get("task_score") is not None for r in rows)  # the task metric's column, when set
    out = ["## All rows", "", "| # | instruction | repeat | similarity | precision | cut |" + (" task_score |" if task else ""),
           "|---|---|---|---|---|---|" + ("---|" if task else "")]
    for i, r in enumerate(rows):
        cut = {True: "**yes**", False: "no", None: "?"}[is_cut(r)]
        # the instruction a reader recognises (a prompt_id hash identifies nothing to a person)
        text = " ".join(str(r.get("instructions") or r.get("prompt_id") or "-").split())
        text = _clip(text, 80).replace("|", "\\|")
        out.append(f"| {i} | {text} | {r.get('repeat_index', '-')} | {_fmt(r.get('similarity_scores'))} | "
                   f"{_fmt(r.get('precision_scores'))} | {cut} |" + (f" {_fmt(r.get('task_score'))} |" if task else ""))
    return out + [""]
