"""Score aggregation: per-row means over repeats, then dataset-level statistics.

Design choices (each one changes the number users act on, so they are spelled out):
- A judgement that stayed invalid is a *failure*, never a 0: it is left out of the row's
  mean. A row whose every repeat failed has no score (None) and is left out of the
  dataset means and coverage; it is counted in `failed_rows`.
- The failure ratio is failed judgements / all judgements (one judgement = one repeat of
  one row), because that is what the service LLM did or did not deliver.
- The 95% confidence interval of a mean is the Student-t interval over the row means
  (rows are the independent units; repeats of a row are not independent samples), clipped
  to the 0-100 score scale: with few rows the t interval reaches beyond it, and a bound no
  score can take says nothing.
- Agreement between repeats is the mean, over rows with >= 2 valid repeats, of each row's
  sample standard deviation (ddof=1). A single repeat says nothing about agreement, so
  those rows get None rather than a misleading 0.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Sequence

from scipy.special import stdtrit  # the t quantile; scipy.stats would add ~4 s of import

# RowScore lives in contract.py (beside RepeatScore, its output columns read it); re-exported here
from llamaduo.judging.contract import SCALE, SCORES, RepeatScore, RowScore  # noqa: F401


def _mean(values: Sequence[float]) -> float | None:
    return float(statistics.fmean(values)) if values else None


def _std(values: Sequence[float]) -> float | None:
    return float(statistics.stdev(values)) if len(values) >= 2 else None


def aggregate_row(judgements: Iterable[RepeatScore]) -> RowScore:
    """Mean and std of the valid repeats; failures are listed, never averaged in."""
    js = tuple(judgements)
    valid = [j for j in js if j.ok]
    failed = [j for j in js if not j.ok]
    sims = [float(j.similarity) for j in valid]
    precs = [float(j.precision) for j in valid]
    reason = None
    if failed:
        reason = "; ".join(
            f"repeat {i}: {j.error}" for i, j in enumerate(js) if not j.ok
        )
    return RowScore(
        judgements=js,
        similarity=_mean(sims),
        precision=_mean(precs),
        similarity_std=_std(sims),
        precision_std=_std(precs),
        failures=len(failed),
        failure_reason=reason,
    )


def mean_ci95(values: Sequence[float],
              bounds: tuple[float, float] = SCALE) -> tuple[float | None, list[float] | None]:
    """Mean and Student-t 95% confidence interval, clipped to `bounds` (the scale the values
    live on); the interval is None below 2 values."""
    if not values:
        return None, None
    mean = float(statistics.fmean(values))
    if len(values) < 2:
        return mean, None
    sem = statistics.stdev(values) / math.sqrt(len(values))
    half = float(stdtrit(len(values) - 1, 0.975)) * sem
    lo, hi = bounds
    return mean, [max(lo, mean - half), min(hi, mean + half)]


#: The two-sided 95% normal quantile (scipy.special.ndtri(0.975)), for the Wilson interval.
Z95 = 1.959963984540054


def wilson_ci95(share: float, n: int) -> list[float] | None:
    """The Wilson score 95% interval of a share (0-1) observed over `n` independent units,
    on the 0-100 scale; None for n = 0.

    Why Wilson and not mean +- 1.96 * SE: the normal (Wald) interval collapses to [0, 0] at
    0/n and to [100, 100] at n/n, claiming certainty no finite sample gives; Wilson's stays
    inside [0, 100] and keeps a width there (0 of 44 -> [0, 8.0]). Written out (a few lines)
    because statsmodels is not a dependency."""
    if n <= 0:
        return None
    p = min(1.0, max(0.0, float(share)))
    z2 = Z95 * Z95
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return [100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)]


def coverage(values: Sequence[float], threshold: float) -> float | None:
    """Share (0-1) of values at or above the threshold."""
    if not values:
        return None
    return sum(1 for v in values if v >= threshold) / len(values)


@dataclass
class Thresholds:
    """The pass/fail knobs, all on the 0-100 score scale."""

    similarity: float
    precision: float
    coverage: float = 50.0
    max_failure_ratio: float = 0.1


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def summarize(rows: Sequence[RowScore], thresholds: Thresholds, judged: bool = True) -> dict:
    """All the summary.json numbers that depend only on the scores.

    `qualified` requires both means to reach their thresholds; a run with no scored row
    cannot qualify. Without a judge (`judged=False`, service_llm_provider none) no row is
    judged, none failed, and the judge sets no criterion: the verdict rests on the criteria
    other checks (the task metric) append.
    """
    scored = [r for r in rows if r.scored]
    judgements = sum(len(r.judgements) for r in rows)
    failures = sum(r.failures for r in rows)
    out: dict = {
        "judged": judged,
        "rows": len(rows),
        "scored_rows": len(scored),
        "failed_rows": len(rows) - len(scored) if judged else 0,
        "judgements": judgements,
        "failures": failures,
        "failure_ratio": _round(failures / judgements if judgements else 0.0),
        "max_failure_ratio": thresholds.max_failure_ratio,
        "coverage_threshold": thresholds.coverage,
        "avg_similarity_threshold": thresholds.similarity,
        "avg_precision_threshold": thresholds.precision,
    }
    means: dict[str, float | None] = {}
    for name in SCORES:
        vals = [getattr(r, name) for r in scored]
        mean, ci = mean_ci95(vals)
        means[name] = mean
        stds = [getattr(r, f"{name}_std") for r in scored if getattr(r, f"{name}_std") is not None]
        out[f"mean_{name}"] = _round(mean)
        out[f"{name}_ci95"] = None if ci is None else [_round(ci[0]), _round(ci[1])]
        out[f"coverage_{name}"] = _round(coverage(vals, thresholds.coverage))
        out[f"mean_std_{name}"] = _round(_mean(stds))
    # Compare the unrounded means: 69.99996 must not round its way to a pass at 70.
    out["criteria"] = [
        criterion(f"mean {name}", means[name], getattr(thresholds, name)) for name in SCORES
    ] if judged else []
    out["qualified"] = (bool(scored) or not judged) and all(c["passed"] for c in out["criteria"])
    return out


def criterion(name: str, value: float | None, bar: float) -> dict:
    """One pass/fail criterion of `qualified`, as the verdict line shows it: the measured
    value beside its bar. Other checks (e.g. a pass rate) append their own to
    summary["criteria"]; `qualified` is the AND over the list."""
    return {"name": name, "value": _round(value, 6), "bar": bar,
            "passed": value is not None and value >= bar}


def too_many_failures(summary: dict) -> bool:
    """True when failed judgements exceed the allowed ratio (or nothing could be scored)."""
    if summary["rows"] and not summary["scored_rows"] and summary.get("judged", True):
        return True
    return summary["failure_ratio"] > summary["max_failure_ratio"]
