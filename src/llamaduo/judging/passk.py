"""Statistics of unit-test results: pass@k, the pass rate with its CI, and judge agreement.

- pass@k is the unbiased estimator of Chen et al. (2021, "Evaluating Large Language Models
  Trained on Code"): for a prompt with n samples of which c pass,
  pass@k = 1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1..n} (1 - k/i) so that no
  huge binomial is ever formed. It is averaged over prompts.
- The pass rate is the mean over prompts of each prompt's share of passing samples (= pass@1),
  with the Wilson score 95% interval over prompts (prompts are the independent units, as rows
  are for the judge's scores). Not the normal approximation: that one collapses to [0, 0] at
  0 of 44 and to [100, 100] at 20 of 20, where an honest interval for 0/44 reaches 8%.
- Agreement with the judge: mean judge score on passing vs failing rows; the AUC of the judge
  score for predicting a pass (Mann-Whitney, ties count one half); the rows the judge scored
  at or above its thresholds that fail their tests.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Optional, Sequence

from llamaduo.judging.aggregate import wilson_ci95

K_VALUES = (1, 2, 5, 10, 20, 50, 100)
LISTED_ROWS = 20  # judge-pass/test-fail rows listed by index in summary.json


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one prompt with n samples, c of them passing (k <= n)."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"need 0 < k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def group_results(keys: Sequence[Hashable], passed: Sequence[Optional[bool]]) -> dict[Hashable, list[bool]]:
    """Per-prompt lists of results, in first-seen prompt order; untested rows (None) left out."""
    groups: dict[Hashable, list[bool]] = defaultdict(list)
    for key, ok in zip(keys, passed):
        if ok is not None:
            groups[key].append(bool(ok))
    return dict(groups)


def pass_rate_stats(groups: dict[Hashable, list[bool]]) -> dict:
    """pass@1 (fraction), the pass rate and its Wilson 95% CI (percent), and pass@k for every
    k in K_VALUES that every prompt has enough samples for."""
    if not groups:
        return {"prompts": 0, "pass_at_1": None, "pass_rate": None, "pass_rate_ci95": None, "pass_at_k": {}}
    n_min = min(len(v) for v in groups.values())
    per_prompt = [sum(v) / len(v) for v in groups.values()]
    mean = 100.0 * sum(per_prompt) / len(per_prompt)
    ci = wilson_ci95(mean / 100.0, len(per_prompt))
    pass_k = {str(k): round(sum(pass_at_k(len(v), sum(v), k) for v in groups.values()) / len(groups), 4)
              for k in K_VALUES if k <= n_min}
    return {
        "prompts": len(groups),
        "samples_per_prompt": [n_min, max(len(v) for v in groups.values())],
        "pass_at_1": round(mean / 100.0, 4),
        "pass_rate": round(mean, 2),
        "pass_rate_ci95": None if ci is None else [round(ci[0], 2), round(ci[1], 2)],
        "pass_at_k": pass_k,
    }


def average_ranks(xs: Sequence[float]) -> list[float]:
    """1-based ranks, a run of ties sharing its average rank (the ranks of Mann-Whitney's U and
    of Spearman's correlation)."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def auc(scores: Sequence[float], labels: Sequence[bool]) -> Optional[float]:
    """Probability that a random passing row outscores a random failing one (ties: 1/2).

    Hand-written (the Mann-Whitney U via average ranks, a few lines) because scikit-learn is
    not a dependency and scipy.stats adds seconds of import for one statistic. None when
    either class is empty (the AUC is undefined)."""
    pos = sum(1 for y in labels if y)
    neg = len(labels) - pos
    if not pos or not neg:
        return None
    rank_sum = sum(r for r, y in zip(average_ranks(scores), labels) if y)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def _mean(xs: Sequence[float]) -> Optional[float]:
    return round(sum(xs) / len(xs), 2) if xs else None


def judge_agreement(passed: Sequence[Optional[bool]], scores: dict[str, Sequence[Optional[float]]],
                    thresholds: dict[str, float]) -> Optional[dict]:
    """How the judge's per-row scores line up with the tests, over rows that have both.

    `scores` maps a score name (similarity, precision) to its per-row values; `thresholds`
    gives each score's bar. A row "passes the judge" when every score reaches its bar."""
    names = list(scores)
    both = [i for i, ok in enumerate(passed)
            if ok is not None and all(scores[n][i] is not None for n in names)]
    if not both:
        return None
    labels = [bool(passed[i]) for i in both]
    out: dict = {"rows": len(both), "passing_rows": sum(labels), "failing_rows": len(labels) - sum(labels)}
    for name in names:
        vals = [float(scores[name][i]) for i in both]
        a = auc(vals, labels)
        out[name] = {
            "mean_passing": _mean([v for v, y in zip(vals, labels) if y]),
            "mean_failing": _mean([v for v, y in zip(vals, labels) if not y]),
            "auc": None if a is None else round(a, 4),
        }
    fooled = [i for i in both if not passed[i] and all(scores[n][i] >= thresholds[n] for n in names)]
    out["judge_pass_test_fail"] = {"count": len(fooled), "rows": fooled[:LISTED_ROWS]}
    return out
