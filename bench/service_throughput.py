"""Service-LLM scheduling throughput against the local protocol server (fixed 1 s latency).

Prints each figure as a ratio against its target or against a baseline measured in the same run:

1. 600 RPM limit, 32 workers: achieved RPM / 600 (target >= 0.95) and the number of 429s
   the server (which enforces 600 RPM over a sliding 60 s window) answered (target 0).
2. No limit, W workers: throughput / (W / latency) (target >= 0.90).
3. The original tool's scheduler side by side with ours at 60 RPM and 4 workers. The original
   (llamaduo src/gen/utils.py `_calculate_job_distribution`, src/llamaduo/pipeline/eval.py) takes
   `eval_workers` prompts at a time, launches batches of int((rpm/60) / (1/20) / workers)
   calls with asyncio.gather, then sleeps 60 / batch seconds after each batch.
4. A rerun of part 1's requests with the same ledger: calls made (target 0).

Usage:  python bench/service_throughput.py [--quick]   (full run: about 3 minutes; --quick about
1 minute, with the server's RPM window scaled to 10 s)
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]  # the checkout's src/llamaduo, then the repo root
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.servers.process import server_process, server_stats as stats  # noqa: E402
from llamaduo.service_llm import Job, ServiceLLM, ServiceLLMArgs  # noqa: E402

LATENCY_S = 1.0


def protocol_server(*extra: str):
    """The protocol server as a subprocess with the fixed 1 s latency, yielding its URL."""
    return server_process("--latency", str(LATENCY_S), *extra)


def make_llm(url: str, workers: int, rpm: int, ledger: Path | None) -> ServiceLLM:
    args = ServiceLLMArgs(service_llm_provider="openai", service_model_name="mock-judge",
                          service_llm_api_key="sk-bench", service_llm_base_url=url + "/v1",
                          rate_limit_per_minute=rpm, ledger_path=str(ledger) if ledger else None,
                          no_cache=ledger is None, max_retries=6, request_timeout_s=30)
    return ServiceLLM.from_args(args, workers=workers, show_progress=False)


def steady_rpm(arrivals: list[float]) -> float:
    """Requests per minute between the first and the last arrival at the server."""
    arrivals = sorted(arrivals)
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) * 60


def part1_rate_limited(n: int, ledger: Path, window_s: float) -> tuple[list[Job], Path]:
    """The server allows 600 requests per minute in any sliding window (scaled to `window_s`:
    600 * window_s / 60 per window); more than a window's worth of requests make it bite."""
    jobs = [Job(f"bench request {i}") for i in range(n)]
    per_window = round(600 * window_s / 60)
    with protocol_server("--rpm", str(per_window), "--rpm-window-s", str(window_s)) as url:
        llm = make_llm(url, workers=32, rpm=600, ledger=ledger)
        t0 = time.monotonic()
        results = llm.run(jobs, parse=lambda t: t, desc="600 RPM")
        wall = time.monotonic() - t0
        s = stats(url)
    ok = sum(r.ok for r in results)
    rpm = steady_rpm(s["accepted_times"])
    print(f"1. 600 RPM, 32 workers, {n} requests: achieved {rpm:.1f} RPM -> ratio {rpm / 600:.3f} "
          f"(target >= 0.95); wall-clock {n / wall * 60:.1f} RPM incl. the last 1 s reply "
          f"-> {n / wall * 60 / 600:.3f}; 429s from the server: {s['rpm_rejections']} (target 0); "
          f"max requests in any {window_s:g} s window: {s['max_window_count']} of {per_window} allowed; "
          f"ok {ok}/{n}")
    return jobs, ledger


def part2_unlimited(workers: int, rounds: int) -> None:
    n = workers * rounds
    with protocol_server() as url:
        llm = make_llm(url, workers=workers, rpm=0, ledger=None)
        llm.run([Job(f"warm-up {i}") for i in range(workers)], parse=lambda t: t, desc="warm-up")
        t0 = time.monotonic()
        results = llm.run([Job(f"free request {i}") for i in range(n)], parse=lambda t: t, desc="no limit")
        wall = time.monotonic() - t0
    ideal = workers / LATENCY_S
    seen = sum(r.completions[0].latency_s for r in results if r.ok) / max(1, sum(r.ok for r in results))
    print(f"2. no limit, {workers} workers, {n} requests: {n / wall:.2f} req/s vs W/latency = {ideal:.0f} "
          f"-> ratio {n / wall / ideal:.3f} (target >= 0.90); ok {sum(r.ok for r in results)}/{n}\n"
          f"   mean round trip seen by the client {seen:.3f} s for the server's {LATENCY_S:.1f} s "
          f"(HTTP + SDK + CPU contention); concurrency kept busy: throughput x round trip / W = "
          f"{n / wall * seen / workers:.3f}")


async def original_scheduler(url: str, prompts: list[str], rpm: int, workers: int) -> None:
    """The original tool's loop, calling the same server through the same SDK."""
    import openai

    client = openai.AsyncOpenAI(api_key="sk-bench", base_url=url + "/v1", max_retries=0)
    jobs_per_batch = max(1, int((rpm / 60) / (1 / 20) / workers))
    sleep_s = 60 / jobs_per_batch

    async def call(prompt: str) -> str:
        resp = await client.chat.completions.create(model="mock-judge",
                                                    messages=[{"role": "user", "content": prompt}])
        return resp.choices[0].message.content

    for idx in range(0, len(prompts), workers):  # eval_on_records: eval_workers rows at a time
        queue = list(prompts[idx: idx + workers])
        while queue:  # _gen_eval_on_records
            batch, queue = queue[:jobs_per_batch], queue[jobs_per_batch:]
            await asyncio.gather(*(call(p) for p in batch))
            await asyncio.sleep(sleep_s)
    await client.close()


def part3_side_by_side(n: int) -> None:
    rpm, workers = 60, 4
    prompts = [f"side by side {i}" for i in range(n)]
    with protocol_server() as url_orig, protocol_server() as url_ours:
        async def both() -> tuple[float, float]:
            async def timed(coro) -> float:
                t0 = time.monotonic()
                await coro
                return time.monotonic() - t0
            llm = make_llm(url_ours, workers=workers, rpm=rpm, ledger=None)
            llm.show_progress = False
            return await asyncio.gather(
                timed(original_scheduler(url_orig, prompts, rpm, workers)),
                timed(llm.arun([Job(p) for p in prompts], parse=lambda t: t)),
            )
        wall_orig, wall_ours = asyncio.run(both())
    orig_rpm, ours_rpm = n / wall_orig * 60, n / wall_ours * 60
    print(f"3. 60 RPM, 4 workers, {n} requests: original batch-and-sleep {orig_rpm:.1f} RPM "
          f"({orig_rpm / rpm:.3f} of the limit), ours {ours_rpm:.1f} RPM ({ours_rpm / rpm:.3f} of the limit) "
          f"-> ours / original = {ours_rpm / orig_rpm:.2f}x")


def part4_rerun(jobs: list[Job], ledger: Path) -> None:
    with protocol_server("--rpm", "600") as url:
        llm = make_llm(url, workers=32, rpm=600, ledger=ledger)
        results = llm.run(jobs, parse=lambda t: t, desc="rerun")
        calls = stats(url)["total"]
    print(f"4. rerun of part 1 ({len(jobs)} requests) with the same ledger: {calls} calls made (target 0); "
          f"{sum(r.ok for r in results)} results served from the ledger")


def main() -> int:
    import openai  # noqa: F401  (SDK import time is not scheduling time)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (about 1 minute), noisier figures")
    ns = parser.parse_args()
    # full: 700 requests take 70 s, so the server's 60 s window fills and could answer 429
    n1, window, rounds, n3 = (150, 10.0, 4, 8) if ns.quick else (700, 60.0, 8, 16)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (figures drop when the machine is busy)")
    with tempfile.TemporaryDirectory() as tmp:
        jobs, ledger = part1_rate_limited(n1, Path(tmp) / "ledger.sqlite", window)
        part2_unlimited(32, rounds)
        part3_side_by_side(n3)
        part4_rerun(jobs, ledger)
    return 0


if __name__ == "__main__":
    sys.exit(main())
