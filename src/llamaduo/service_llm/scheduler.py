"""Smooth RPM/TPM pacing and bounded retries with backoff.

`Pacer` hands out start slots one every 60/RPM s (not a minute's bucket at once, which doubles
the rate in a sliding window and earns 429s) and keeps a sliding-window log of reserved tokens
so the TPM limit holds in every 60 s window, refunding unused reservations. Retries: tenacity,
exponential backoff with jitter, Retry-After honoured; every attempt takes a pacing slot.
Why hand-written and not aiolimiter: docs/service_llm.md (Scheduling).
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from llamaduo.service_llm.records import FatalError, PermanentError, TransientError

T = TypeVar("T")

#: Slots are spaced this much wider than 60/RPM so that jitter between our send time and the
#: provider's arrival time cannot squeeze RPM + 1 requests into the provider's window.
RPM_SAFETY_MARGIN = 0.01
MAX_BACKOFF_S = 60.0


@dataclass
class Reservation:
    start: float  # time.monotonic() at which the request may start
    entry: Optional[list]  # the [start, tokens] cell in the TPM window log, if TPM is limited
    reserved: int


class Pacer:
    """Start slots for requests under an RPM and a TPM limit (0 = unlimited)."""

    def __init__(self, rpm: int, tpm: int, *, window_s: float = 60.0,
                 log: Optional[list] = None) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.window_s = window_s
        self.interval = window_s / rpm * (1 + RPM_SAFETY_MARGIN) if rpm else 0.0
        self._next_start = 0.0
        self._next_token_start = 0.0
        self._window: deque[list] = deque()  # [start, tokens, in_window], starts non-decreasing
        self._window_tokens = 0
        self._log = log  # optional (start, reserved) record, read by tests

    def _reserve(self, tokens: int) -> Reservation:
        """Compute the earliest start that keeps both limits (no await: atomic in the loop)."""
        now = time.monotonic()
        start = max(now, self._next_start)
        entry = None
        if self.tpm:
            tokens = min(tokens, self.tpm)  # one call larger than the TPM could never start
            start = max(start, self._next_token_start)
            # sliding-window log: drop old entries until this call fits in the window
            while self._window and self._window[0][0] <= start - self.window_s:
                self._evict()
            while self._window and self._window_tokens + tokens > self.tpm:
                start = max(start, self._evict()[0] + self.window_s)
            entry = [start, tokens, True]
            self._window.append(entry)
            self._window_tokens += tokens
            self._next_token_start = start + tokens * self.window_s / self.tpm
        if self.rpm:
            self._next_start = start + self.interval
        if self._log is not None:
            self._log.append((start, tokens))
        return Reservation(start, entry, tokens)

    def _evict(self) -> list:
        oldest = self._window.popleft()
        oldest[2] = False
        self._window_tokens -= oldest[1]
        return oldest

    async def acquire(self, tokens: int = 0) -> Reservation:
        res = self._reserve(tokens)
        delay = res.start - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        return res

    def settle(self, res: Reservation, actual_tokens: int) -> None:
        """Replace a reservation by the tokens actually used (refunding the rest), so a
        max-output-sized reservation does not slow the run down once the true size is known."""
        if res.entry is None or actual_tokens >= res.reserved:
            return
        refund = res.reserved - actual_tokens
        res.entry[1] = actual_tokens
        if res.entry[2]:  # still inside the window log
            self._window_tokens -= refund
        self._next_token_start -= refund * self.window_s / self.tpm


class CallFailed(Exception):
    """A call that failed for good (retries exhausted, or a permanent error)."""


def _backoff(initial_s: float) -> Callable[[RetryCallState], float]:
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            # the server said when: wait that long, plus a little jitter so that workers
            # told the same thing do not all come back in the same instant
            return min(MAX_BACKOFF_S, max(0.0, retry_after) * (1 + 0.1 * random.random()))
        ceiling = min(MAX_BACKOFF_S, initial_s * 2 ** (state.attempt_number - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # "equal jitter"

    return wait


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    pacer: Pacer,
    reserve_tokens: int,
    max_retries: int,
    on_retry: Callable[[str], None] = lambda reason: None,
    backoff_initial_s: float = 1.0,
    actual_tokens: Callable[[T], int] = lambda raw: raw.input_tokens + raw.output_tokens,  # type: ignore[attr-defined]
) -> T:
    """Run `fn` (one request) under the pacer, retrying TransientError up to `max_retries`
    times. Raises CallFailed when it gives up; FatalError passes through."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        on_retry(str(exc))

    retrying = AsyncRetrying(
        stop=stop_after_attempt(max_retries + 1),
        retry=retry_if_exception_type(TransientError),
        wait=_backoff(backoff_initial_s),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                res = await pacer.acquire(reserve_tokens)
                raw = await fn()
                pacer.settle(res, actual_tokens(raw))
                return raw
    except TransientError as err:
        raise CallFailed(f"gave up after {max_retries + 1} attempt(s): {err}") from err
    except PermanentError as err:
        raise CallFailed(f"request rejected: {err}") from err
    except FatalError:
        raise
    raise AssertionError("unreachable")  # pragma: no cover
