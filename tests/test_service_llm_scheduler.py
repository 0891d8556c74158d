"""Pacing and retry policy, checked on the scheduler itself (short windows keep it fast)."""
from __future__ import annotations

import asyncio
import time

import pytest

from llamaduo.service_llm.records import FatalError, PermanentError, TransientError
from llamaduo.service_llm.scheduler import CallFailed, Pacer, call_with_retries


def max_in_window(points: list[tuple[float, int]], window: float) -> tuple[int, int]:
    """(most starts, most tokens) in any half-open window [t, t + window)."""
    points = sorted(points)
    most_n = most_tok = 0
    for i, (t0, _) in enumerate(points):
        inside = [tok for t, tok in points[i:] if t < t0 + window]
        most_n, most_tok = max(most_n, len(inside)), max(most_tok, sum(inside))
    return most_n, most_tok


async def _acquire_all(pacer: Pacer, sizes: list[int], settle_to: int | None = None) -> list[float]:
    async def one(size: int) -> float:
        res = await pacer.acquire(size)
        started = time.monotonic()
        if settle_to is not None:
            pacer.settle(res, settle_to)
        return started
    return await asyncio.gather(*(one(s) for s in sizes))


def test_rpm_slots_are_evenly_spaced_not_bursty():
    log: list = []
    pacer = Pacer(rpm=20, tpm=0, window_s=1.0, log=log)  # 20 per 1 s window -> one every 50 ms
    woke = asyncio.run(_acquire_all(pacer, [0] * 30))
    slots = sorted(s for s, _ in log)  # the granted start times (wake-ups can be late on a busy CPU)
    assert min(b - a for a, b in zip(slots, slots[1:])) >= 0.05
    assert all(w >= s - 0.005 for w, s in zip(sorted(woke), slots))  # nobody starts before its slot
    assert max_in_window([(s, 0) for s, _ in log], 1.0)[0] <= 20
    # a whole-window bucket (AsyncLimiter(20, 1)-style) would start 20 at t=0
    assert sum(1 for s, _ in log if s < log[0][0] + 0.25) <= 6


def test_tpm_never_exceeded_in_any_window():
    log: list = []
    pacer = Pacer(rpm=0, tpm=1000, window_s=0.5, log=log)
    sizes = [300, 450, 120, 999, 50, 700, 260, 310, 80, 640]
    asyncio.run(_acquire_all(pacer, sizes))
    assert sorted(tok for _, tok in log) == sorted(sizes)
    assert max_in_window(log, 0.5)[1] <= 1000


def test_tpm_refund_speeds_up_later_calls():
    """A call reserves its max output; once its real size is known the rest is refunded."""
    async def sequential(settle_to):
        pacer = Pacer(rpm=0, tpm=1000, window_s=0.5)
        t0 = time.monotonic()
        for _ in range(6):
            res = await pacer.acquire(500)
            if settle_to is not None:
                pacer.settle(res, settle_to)
        return time.monotonic() - t0
    assert asyncio.run(sequential(50)) < asyncio.run(sequential(None)) * 0.5


def test_oversized_call_is_capped_not_stuck():
    pacer = Pacer(rpm=0, tpm=100, window_s=0.2)
    asyncio.run(asyncio.wait_for(_acquire_all(pacer, [5000, 5000]), timeout=5))


def _flaky(errors: list[Exception]):
    calls = {"n": 0}

    async def fn():
        calls["n"] += 1
        if errors:
            raise errors.pop(0)
        return "done"
    return fn, calls


def test_retry_transient_then_success_counts_retries():
    fn, calls = _flaky([TransientError("503"), TransientError("timeout")])
    seen: list[str] = []
    out = asyncio.run(call_with_retries(fn, pacer=Pacer(0, 0), reserve_tokens=0, max_retries=3,
                                        on_retry=seen.append, backoff_initial_s=0.01,
                                        actual_tokens=lambda raw: 0))
    assert out == "done" and calls["n"] == 3 and seen == ["503", "timeout"]


def test_retry_is_bounded():
    fn, calls = _flaky([TransientError("429")] * 10)
    with pytest.raises(CallFailed, match="gave up after 3 attempt"):
        asyncio.run(call_with_retries(fn, pacer=Pacer(0, 0), reserve_tokens=0, max_retries=2,
                                      backoff_initial_s=0.01))
    assert calls["n"] == 3


def test_permanent_and_fatal_are_not_retried():
    fn, calls = _flaky([PermanentError("400 bad request")])
    with pytest.raises(CallFailed, match="rejected"):
        asyncio.run(call_with_retries(fn, pacer=Pacer(0, 0), reserve_tokens=0, max_retries=5))
    fn, calls2 = _flaky([FatalError("401")])
    with pytest.raises(FatalError):
        asyncio.run(call_with_retries(fn, pacer=Pacer(0, 0), reserve_tokens=0, max_retries=5))
    assert calls["n"] == 1 and calls2["n"] == 1


def test_retry_after_overrides_backoff_and_backoff_grows():
    fn, _ = _flaky([TransientError("429", retry_after=0.3)])
    t0 = time.monotonic()
    asyncio.run(call_with_retries(fn, pacer=Pacer(0, 0), reserve_tokens=0, max_retries=1,
                                  backoff_initial_s=0.001, actual_tokens=lambda raw: 0))
    assert 0.3 <= time.monotonic() - t0 < 1.0
    fn, _ = _flaky([TransientError("500")] * 3)
    t0 = time.monotonic()
    asyncio.run(call_with_retries(fn, pacer=Pacer(0, 0), reserve_tokens=0, max_retries=3,
                                  backoff_initial_s=0.1, actual_tokens=lambda raw: 0))
    # equal jitter: waits of at least 0.05 + 0.1 + 0.2 s
    assert time.monotonic() - t0 >= 0.35
