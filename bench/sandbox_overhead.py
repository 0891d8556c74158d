"""Benchmark: the kernel sandbox's cost per test (src/llamaduo/sandbox.py).

Runs one HumanEval-shaped test (`check(candidate)` with five asserts) N times, one at a time,
with isolation none (the same two processes and pipes, no namespaces) and with bubblewrap, and
prints the median wall time per test of each.

Target (issue 23), printed as a ratio (<= 1.0 is a pass):
  (median bwrap - median none) / 150 ms    the sandbox adds at most 150 ms per test
Also printed: both medians, and how long 164 tests (HumanEval) take at 4 workers with bwrap.

Run:  .venv/bin/python bench/sandbox_overhead.py [--runs 20]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # the checkout's src/llamaduo, then the repo root

from llamaduo.sandbox import ExecJob, SandboxLimits, run_candidate, run_many  # noqa: E402

CODE = "def add(a, b):\n    return a + b\n"
TEST = "def check(candidate):\n" + "".join(f"    assert candidate({i}, {i}) == {2 * i}\n" for i in range(5))
BUDGET_MS = 150.0


def median_ms(isolation: str, runs: int) -> float:
    job, limits = ExecJob(CODE, TEST, "add"), SandboxLimits(timeout_s=10, memory_mb=512, isolation=isolation)
    run_candidate(job, limits)  # warm-up (the bwrap probe, page cache)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        res = run_candidate(job, limits)
        times.append(1000 * (time.perf_counter() - started))
        if not res.passed:
            raise SystemExit(f"the benchmark's test failed under {isolation}: {res.reason}")
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    none = median_ms("none", args.runs)
    bwrap = median_ms("bwrap", args.runs)
    started = time.perf_counter()
    run_many([ExecJob(CODE, TEST, "add")] * 164, SandboxLimits(timeout_s=10, memory_mb=512), workers=4)
    batch = time.perf_counter() - started
    print(f"median per test: none {none:.0f} ms, bwrap {bwrap:.0f} ms (+{bwrap - none:.0f} ms)")
    print(f"164 tests, 4 workers, bwrap: {batch:.1f} s")
    print(f"ratio (sandbox overhead / {BUDGET_MS:.0f} ms): {(bwrap - none) / BUDGET_MS:.2f}")


if __name__ == "__main__":
    main()
