"""evaluation.py throughput: 200 rows x 3 repeats at 600 RPM against the local protocol server
answering every request after 1 s.

The ideal wall time is 600 calls / 600 RPM = 60 s: the RPM limit, not latency, is the
bottleneck (16 workers x 1 s latency could do 960 RPM). Prints:

1. the whole stage (load, prompts, judging, aggregation, dataset + report writing) wall time
   divided by the 60 s ideal (target <= 1.1), the achieved RPM while judging, and the 429s the
   server (which enforces 600 RPM over a sliding 60 s window) had to answer (target 0);
2. the same evaluation rerun with the same ledger: new calls (target 0) and its wall time as
   a ratio of run 1's (the cost of a finished evaluation's rerun).

Usage:  python bench/evaluation_throughput.py      (about 70 s)
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]  # the checkout's src/llamaduo, then the repo root
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.servers.process import server_process as protocol_server, server_stats as stats  # noqa: E402
from llamaduo.pipeline.evaluation import main  # noqa: E402

ROWS, REPEAT, RPM, LATENCY_S, WORKERS = 200, 3, 600, 1.0, 16
IDEAL_S = ROWS * REPEAT / RPM * 60


def write_rows(path: Path) -> None:
    with path.open("w") as f:
        for i in range(ROWS):
            f.write(json.dumps({
                "instructions": f"Write a Python function number {i} that adds two numbers.",
                "target_responses": f"def add_{i}(a, b):\n    return a + b",
                "candidate_responses": f"def add_{i}(x, y):\n    return x + y  # variant {i}",
                "model_id": "bench", "model_sha": "0"}) + "\n")


def run_eval(url: str, data: Path, out: Path) -> tuple[float, int, float]:
    argv = ["--service_llm_provider", "openai", "--service_model_name", "mock-judge",
            "--service_llm_api_key", "sk-bench", "--service_llm_base_url", url + "/v1",
            "--rate_limit_per_minute", str(RPM), "--eval_workers", str(WORKERS),
            "--eval_repeat", str(REPEAT), "--lm_response_ds_id", str(data), "--eval_ds_id", str(out),
            "--prompt_tmpl_path", str(REPO / "src/llamaduo/defaults/prompts.toml"),
            "--pricing_path", str(REPO / "src/llamaduo/defaults/pricing.yaml"),
            "--avg_similarity_threshold", "0", "--avg_precision_threshold", "0"]
    start, mono = time.perf_counter(), time.monotonic()  # the server's times are CLOCK_MONOTONIC too
    code = main(argv)
    return time.perf_counter() - start, code, mono


def bench() -> None:
    with tempfile.TemporaryDirectory() as tmp, protocol_server("--latency", str(LATENCY_S), "--rpm", str(RPM)) as url:
        data = Path(tmp) / "responses.jsonl"
        write_rows(data)
        out = Path(tmp) / "eval"
        wall, code, t0 = run_eval(url, data, out)
        s1 = stats(url)
        times = s1["accepted_times"]
        judge_span = (max(times) - min(times)) if len(times) > 1 else 0.0
        wall2, code2, _ = run_eval(url, data, out)
        s2 = stats(url)
        summary = json.loads((out / "summary.json").read_text())
    print(f"\n== evaluation throughput: {ROWS} rows x {REPEAT} repeats, {RPM} RPM, "
          f"{LATENCY_S:g} s latency, {WORKERS} workers ==")
    print(f"1. wall {wall:.1f} s / ideal {IDEAL_S:.0f} s = {wall / IDEAL_S:.3f} (target <= 1.1); exit {code}")
    print(f"   requests {s1['accepted']} accepted, 429s {s1['rpm_rejections']} (target 0); "
          f"achieved while judging {60 * (len(times) - 1) / judge_span if judge_span else 0:.0f} RPM "
          f"/ {RPM} = {(len(times) - 1) / judge_span * 60 / RPM if judge_span else 0:.3f}")
    if times:
        before, after = min(times) - t0, t0 + wall - (max(times) + LATENCY_S)
        print(f"   where the time went: {before:.1f} s before the first request (imports of the SDK, "
              f"config, data), {judge_span + LATENCY_S:.1f} s judging (ideal {IDEAL_S - 60 / RPM + LATENCY_S:.1f} s), "
              f"{after:.1f} s after the last reply (aggregation, dataset, report)")
    print(f"2. rerun with the same ledger: new calls {s2['total'] - s1['total']} (target 0), wall "
          f"{wall2:.1f} s = {wall2 / wall:.3f} x run 1; exit {code2}; "
          f"judgements {summary['judgements']}, failures {summary['failures']}")


if __name__ == "__main__":
    bench()
