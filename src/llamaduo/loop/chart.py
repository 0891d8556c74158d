"""The loop's per-round picture (results.png next to results.md): one point per round.

Left panel: the task metric (evaluation's summary.json `task_metric`: mean with its 95% CI as
an error bar) and its bar (`threshold`), so a reader sees at a glance whether the bar sits
between rounds whose intervals do not overlap. Right panel: the judge's mean similarity and
precision with their thresholds, labelled with the judge's name (the reference judge is not an
LLM judge and says so). A panel with nothing to show says that instead of staying blank.

WHY matplotlib: it is already a dependency (evaluation's histogram) and writes a PNG headless
with the Agg backend.

Usage:
    python -m llamaduo.loop.chart OUT [--write OUT/results.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from llamaduo.loop.results_table import judge_name, read_summary, round_dirs


def points(out: Path) -> list[dict[str, Any]]:
    """Per round with a finished evaluation: its number, task metric block and judge means."""
    found = []
    for k, rdir in round_dirs(out):
        s = read_summary(rdir)
        if s is None:
            continue
        tm = s.get("task_metric") if isinstance(s.get("task_metric"), dict) else None
        found.append({"round": k, "task_metric": tm, "qualified": s.get("qualified"),
                      "similarity": s.get("mean_similarity"), "precision": s.get("mean_precision"),
                      "similarity_threshold": s.get("avg_similarity_threshold"),
                      "precision_threshold": s.get("avg_precision_threshold"),
                      "judged": s.get("judged", True), "judge": judge_name(s)})
    return found


def _bound(value: Any, mean: float) -> float:
    """A CI bound as a number; the mean itself (no error bar) when the summary has none.
    (0.0 is a real bound: the lower end of 0 of n.)"""
    return mean if value is None else float(value)


def draw(pts: list[dict[str, Any]], path: Path, title: str = "LlamaDuo loop") -> None:
    """Write the two-panel PNG for `pts` (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    rounds = [p["round"] for p in pts]
    labels = [f"{r} (base)" if r == 0 else str(r) for r in rounds]
    metric = [p for p in pts if p["task_metric"] and p["task_metric"].get("mean") is not None]
    if metric:
        name = metric[0]["task_metric"].get("name", "task metric")
        xs = [p["round"] for p in metric]
        ys = [float(p["task_metric"]["mean"]) for p in metric]
        lo = [y - _bound(p["task_metric"].get("ci_low"), y) for y, p in zip(ys, metric)]
        hi = [_bound(p["task_metric"].get("ci_high"), y) - y for y, p in zip(ys, metric)]
        left.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", capsize=5, color="tab:blue", label=f"{name} (95% CI)")
        for x, y, p in zip(xs, ys, metric):
            left.annotate(f"{y:.1f}" + (" ✓" if p["qualified"] else ""), (x, y), textcoords="offset points",
                          xytext=(8, -4), fontsize=9)
        bar = metric[-1]["task_metric"].get("threshold")
        if bar is not None:
            left.axhline(float(bar), color="tab:red", ls="--", label=f"bar {float(bar):g}")
        left.set_title(f"task metric: {name}")
        left.legend(loc="lower right", fontsize=8)
    else:
        left.text(0.5, 0.5, "no task metric in these evaluations", ha="center", va="center",
                  transform=left.transAxes)
        left.set_title("task metric")
    judged = [p for p in pts if p["judged"] and p["similarity"] is not None]
    if judged:
        xs = [p["round"] for p in judged]
        for key, color in (("similarity", "tab:green"), ("precision", "tab:orange")):
            right.plot(xs, [float(p[key]) for p in judged], "o-", color=color, label=f"mean {key}")
            bar = judged[-1][f"{key}_threshold"]
            if bar:
                right.axhline(float(bar), color=color, ls=":", label=f"{key} bar {float(bar):g}")
        who = judged[-1]["judge"].split(" (")[0].replace("the offline reference judge", "reference judge (not an LLM)")
        if not (judged[-1]["similarity_threshold"] or judged[-1]["precision_threshold"]):
            who += ": thresholds 0, it informs only"
        right.set_title(f"judge: {who}", fontsize=9)
        right.legend(loc="lower right", fontsize=8)
    else:
        right.text(0.5, 0.5, "no judge (service_llm_provider none)", ha="center", va="center",
                   transform=right.transAxes)
        right.set_title("judge")
    for ax in (left, right):
        ax.set_xticks(rounds, labels)
        ax.set_xlabel("round")
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
    left.set_ylabel("score (0-100)")
    fig.suptitle(title + " (the task metric decides `qualified`)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamaduo.loop.chart", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the loop's output root (OUT)")
    parser.add_argument("--write", type=Path, default=None, help="PNG to write (default OUT/results.png)")
    args = parser.parse_args(argv)
    if not args.out.is_dir():
        print(f"error: {args.out} is not a folder", file=sys.stderr)
        return 2
    pts = points(args.out)
    if not pts:
        print(f"no finished evaluation under {args.out}: no picture written", file=sys.stderr)
        return 0
    path = args.write or args.out / "results.png"
    draw(pts, path)
    print(f"picture written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
