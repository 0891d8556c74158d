"""Build the LlamaDuo loop's results table from a loop output folder.

The loop (`llamaduo-loop`, or `scripts/llamaduo.sh` in a clone) leaves, per round, `<OUT>/round_<k>/`:
- `eval/summary.json`   written by evaluation.py (keys `mean_similarity`, `mean_precision`,
                        `coverage_similarity`, `coverage_precision`, `coverage_threshold`,
                        `qualified`, `rows`; see src/llamaduo/judging/aggregate.py `summarize`);
- `model/finetune_summary.json`  written by finetune.py (`train_rows`);
- `train_data.json`     written by the loop: the `dataset_mixer` and `dataset_splits` that
                        round's finetune trained on;
- `<stage>.done`        written by the loop: exit code, the stage's wall seconds, config hash,
                        the stage process's peak RSS in MB (llamaduo.loop.measured);
- `*/summary.json`      every stage output's summary (and `model/finetune_summary.json`):
                        `cost_usd` (or `service_llm.cost_usd`) for the cost column,
                        `peak_rss_mb` for the memory column, and evaluation's
                        `execution.pass_at_1` (a 0-1 fraction) for the pass@1 column.

WHY a separate module: the table is rebuilt from those files alone, so it can be printed again
after a resumed or finished run (`python -m llamaduo.loop.results_table outputs/llamaduo`) without
re-running anything, and the shell script stays free of JSON parsing.

Usage:
    python -m llamaduo.loop.results_table OUT [--write OUT/results.md]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FINETUNE_SUMMARY = "finetune_summary.json"  # written by finetune.py into its output_dir
COLUMNS = ("round", "train rows", "task metric (95% CI)", "mean similarity", "mean precision",
           "coverage (sim / prec)", "pass@1", "qualified", "cost ($)", "peak mem (MB)", "stage time (s)")
STANDIN_TEACHER = "llamaduo-standin-teacher"  # llamaduo.loop.standin_teacher.MODEL (no import: stdlib-light)


@dataclass
class RoundRow:
    """One round's line of the table; None means 'not known (yet)'."""

    round: int
    train_rows: int | None
    mean_similarity: float | None
    mean_precision: float | None
    coverage_similarity: float | None
    coverage_precision: float | None
    qualified: bool | None
    seconds: int
    pass_at_1: float | None = None
    cost_usd: float | None = None
    peak_rss_mb: float | None = None
    task_metric: dict[str, Any] | None = None


def round_dirs(out: Path) -> list[tuple[int, Path]]:
    """`round_<k>` folders sorted by k (numerically: round_10 after round_9)."""
    found = []
    for p in out.glob("round_*"):
        m = re.fullmatch(r"round_(\d+)", p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def read_summary(round_dir: Path) -> dict[str, Any] | None:
    """The round's evaluation summary, or None when the evaluation has not finished."""
    path = round_dir / "eval" / "summary.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def stage_seconds(round_dir: Path) -> int:
    """Sum of the recorded wall seconds of the round's finished stages."""
    total = 0
    for marker in round_dir.glob("*.done"):
        lines = marker.read_text(encoding="utf-8").split()
        if len(lines) >= 2 and lines[1].isdigit():
            total += int(lines[1])
    return total


def stage_summaries(round_dir: Path) -> list[dict[str, Any]]:
    """Every stage summary in a round folder (unreadable ones are skipped: the table is a
    report, it must not fail on a half-written file)."""
    found = []
    for path in sorted(round_dir.glob("*/summary.json")) + sorted(round_dir.glob(f"*/{FINETUNE_SUMMARY}")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            found.append(data)
    return found


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summary_cost(summary: dict[str, Any]) -> float | None:
    """USD a stage spent: its `cost_usd`, else its service-LLM usage's (data_gen)."""
    cost = _number(summary.get("cost_usd"))
    if cost is None and isinstance(summary.get("service_llm"), dict):
        cost = _number(summary["service_llm"].get("cost_usd"))
    return cost


def round_cost(round_dir: Path) -> float | None:
    """Sum of the round's stage costs; None when no stage records one."""
    costs = [c for c in map(summary_cost, stage_summaries(round_dir)) if c is not None]
    return sum(costs) if costs else None


def marker_peaks(round_dir: Path) -> list[float]:
    """Peak RSS (MB) the loop measured for each finished stage (line 4 of its `.done`)."""
    peaks = []
    for marker in round_dir.glob("*.done"):
        lines = marker.read_text(encoding="utf-8").split()
        try:
            peaks.append(float(lines[3]))
        except (IndexError, ValueError):
            continue  # a marker from before this field, or "-"
    return peaks


def round_peak_rss(round_dir: Path) -> float | None:
    """The largest peak RSS among the round's stages: the loop's measurement of each stage
    process, and each stage's own `peak_rss_mb` (the two agree; either may be missing)."""
    peaks = [p for s in stage_summaries(round_dir) if (p := _number(s.get("peak_rss_mb"))) is not None]
    peaks += marker_peaks(round_dir)
    return max(peaks) if peaks else None


def total_cost(out: Path) -> float:
    """USD spent by every round under OUT (the loop's MAX_COST_USD is checked against this)."""
    return sum(round_cost(d) or 0.0 for _, d in round_dirs(out))


def pass_at_1(summary: dict[str, Any]) -> float | None:
    execution = summary.get("execution")
    return _number(execution.get("pass_at_1")) if isinstance(execution, dict) else None


def _train_split(splits: Any) -> str:
    """The train split among finetune's `dataset_splits` (alignment-handbook style list)."""
    if isinstance(splits, str):
        splits = [splits]
    for name in splits or []:
        if "train" in str(name):
            return str(name)
    return "train_sft"


def train_rows(round_dir: Path) -> int | None:
    """Rows the round's finetune trained on: its own report when present, else counted."""
    report = round_dir / "model" / FINETUNE_SUMMARY
    if report.is_file():
        rows = json.loads(report.read_text(encoding="utf-8")).get("train_rows")
        if isinstance(rows, int):
            return rows
    return count_train_rows(round_dir)


def count_train_rows(round_dir: Path) -> int | None:
    """Rows finetune will see: each mixer dataset's train split times its fraction.

    The same rule as alignment-handbook's mixer (`int(fraction * len(split))`), so the
    number matches what the trainer used without the trainer having to report it.
    """
    path = round_dir / "train_data.json"
    if not path.is_file():
        return None
    spec = json.loads(path.read_text(encoding="utf-8"))
    mixer = spec.get("dataset_mixer") or {}
    split = _train_split(spec.get("dataset_splits"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    from llamaduo.data import load_split
    from llamaduo.errors import LlamaDuoError

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    total = 0
    for ref, fraction in mixer.items():
        # A relative ref is relative to the folder the loop ran in, as the stages read it.
        ref = str(ref)
        try:
            n = len(load_split(ref, split))
        except LlamaDuoError as err:  # e.g. a Hub id while offline: say so, keep the table
            logging.getLogger("llamaduo.loop").warning("cannot count rows of %s: %s", ref, err)
            return None
        total += int(float(fraction) * n)
    return total


def collect(out: Path) -> list[RoundRow]:
    """One RoundRow per round folder found under OUT."""
    rows = []
    for k, rdir in round_dirs(out):
        s = read_summary(rdir) or {}
        rows.append(RoundRow(
            round=k,
            train_rows=0 if k == 0 else train_rows(rdir),
            mean_similarity=s.get("mean_similarity"),
            mean_precision=s.get("mean_precision"),
            coverage_similarity=s.get("coverage_similarity"),
            coverage_precision=s.get("coverage_precision"),
            qualified=s.get("qualified"),
            seconds=stage_seconds(rdir),
            pass_at_1=pass_at_1(s),
            cost_usd=round_cost(rdir),
            peak_rss_mb=round_peak_rss(rdir),
            task_metric=s.get("task_metric") if isinstance(s.get("task_metric"), dict) else None,
        ))
    return rows


def task_metric_cell(block: dict[str, Any] | None) -> str:
    """`choice 87.0 [79.0, 92.2] (bar 70)`, or `-` when the round had no task metric."""
    if not block or _number(block.get("mean")) is None:
        return "-"
    cell = f"{block.get('name', 'metric')} {block['mean']:.1f}"
    if _number(block.get("ci_low")) is not None and _number(block.get("ci_high")) is not None:
        cell += f" [{block['ci_low']:.1f}, {block['ci_high']:.1f}]"
    if _number(block.get("threshold")) is not None:
        cell += f" (bar {block['threshold']:g})"
    return cell


def judge_name(summary: dict[str, Any]) -> str:
    """Who judged a round, in words: the reference judge says it is not an LLM judge."""
    if summary.get("judged") is False or summary.get("service_llm_provider") == "none":
        return "none (service_llm_provider none: the task metric alone)"
    provider = str(summary.get("service_llm_provider") or "?")
    if provider == "reference":
        return ("the offline reference judge (not an LLM judge: MiniLM embedding cosine and "
                "ROUGE-L precision against the reference answer)")
    return f"{provider} ({summary.get('evaluator') or 'model not recorded'})"


def teacher_names(out: Path) -> list[str]:
    """The data_gen generators of the run, from each round's synth/summary.json, the stand-in
    named as such."""
    names = []
    for _, rdir in round_dirs(out):
        path = rdir / "synth" / "summary.json"
        try:
            gen = json.loads(path.read_text(encoding="utf-8")).get("generator") if path.is_file() else None
        except (OSError, ValueError):
            gen = None
        if gen and gen not in names:
            names.append(str(gen))
    return [f"{n} (a STAND-IN teacher: a seeded generator of demo pairs served over the OpenAI "
            "API, not an LLM; src/llamaduo/loop/standin_teacher.py)" if n == STANDIN_TEACHER else n for n in names]


def data_gen_lines(out: Path) -> list[str]:
    """One line per round that ran data_gen: pairs kept and dropped by reason."""
    lines = []
    for k, rdir in round_dirs(out):
        path = rdir / "synth" / "summary.json"
        if not path.is_file():
            continue
        try:
            s = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        dropped = s.get("dropped_by_reason") or {}
        why = ", ".join(f"{r} {n}" for r, n in dropped.items()) or "none"
        lines.append(f"- round {k} data_gen: kept {s.get('kept')} pairs, rejected {s.get('rejected')} ({why})")
    return lines


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def render(rows: list[RoundRow], coverage_threshold: float | None = None) -> str:
    """A Markdown table (readable as plain text too)."""
    cells = [COLUMNS]
    for r in rows:
        cells.append((
            f"{r.round}" + (" (base)" if r.round == 0 else ""),
            "-" if r.train_rows is None else str(r.train_rows),
            task_metric_cell(r.task_metric),
            _num(r.mean_similarity),
            _num(r.mean_precision),
            f"{_pct(r.coverage_similarity)} / {_pct(r.coverage_precision)}",
            _pct(r.pass_at_1),
            "-" if r.qualified is None else ("yes" if r.qualified else "no"),
            "-" if r.cost_usd is None else f"{r.cost_usd:.4f}",
            "-" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f}",
            str(r.seconds),
        ))
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    note = "coverage: share of test rows scoring at or above "
    note += "the coverage threshold" if coverage_threshold is None else f"{coverage_threshold:g}"
    costs = [r.cost_usd for r in rows if r.cost_usd is not None]
    total = f" Total service-LLM cost: ${sum(costs):.4f}." if costs else ""
    return "\n".join(lines) + f"\n\n{note}; scores are 0-100 means over the test split.{total}\n"


def provenance(out: Path, summaries: list[dict[str, Any]]) -> list[str]:
    """Lines under the table naming the judge, the teacher and data_gen's rejects."""
    lines = []
    if summaries:
        lines.append(f"- judge: {judge_name(summaries[-1])}")
        metric = summaries[-1].get("task_metric")
        if isinstance(metric, dict):
            lines.append(f"- task metric: {metric.get('name')} (0-100, mean over {metric.get('n')} test rows, "
                         f"95% CI by {metric.get('ci_method', '?')}); it decides `qualified` with its bar")
    teachers = teacher_names(out)
    lines.append(f"- teacher (data_gen): {'; '.join(teachers)}" if teachers else "- teacher (data_gen): not used")
    return lines + data_gen_lines(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamaduo.loop.results_table", description="Print the LlamaDuo loop's per-round results table.")
    parser.add_argument("out", type=Path, help="the loop's output root (OUT)")
    parser.add_argument("--write", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    if not args.out.is_dir():
        print(f"error: {args.out} is not a folder", file=sys.stderr)
        return 2
    rows = collect(args.out)
    summaries = [s for _, d in round_dirs(args.out) if (s := read_summary(d))]
    thresholds = [s.get("coverage_threshold") for s in summaries]
    table = render(rows, thresholds[0] if thresholds else None)
    table += "\n" + "\n".join(provenance(args.out, summaries)) + "\n"
    print(table, end="")
    if args.write is not None:
        args.write.write_text("# LlamaDuo loop results\n\n" + table, encoding="utf-8")
        print(f"table written to {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
