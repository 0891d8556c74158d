"""Stop a run whose provider cannot be reached at all, instead of retrying every row.

`MAX_CONSECUTIVE_UNREACHABLE` never-connected attempts in a row (refused, DNS, connect timeout),
spread over at least `MIN_STREAK_S`, raise FatalError "could not reach <provider> at <url>"
(exit 1); any answer from the server resets the count. docs/service_llm.md (Scheduling).
"""
from __future__ import annotations

import time
from typing import Awaitable, Optional, TypeVar

from llamaduo.service_llm.records import FatalError, ProviderError, UnreachableError

T = TypeVar("T")

MAX_CONSECUTIVE_UNREACHABLE = 4
MIN_STREAK_S = 1.0  # the first retry backoff is 0.5-1 s: a streak this long has outlived one


class Reachability:
    """Counts consecutive never-connected attempts over a run (one event loop: no lock)."""

    def __init__(self, provider: str, base_url: Optional[str],
                 limit: int = MAX_CONSECUTIVE_UNREACHABLE, min_streak_s: float = MIN_STREAK_S) -> None:
        self.provider = provider
        self.where = base_url or "its default endpoint"
        self.limit = limit
        self.min_streak_s = min_streak_s
        self.failures = 0
        self.streak_start = 0.0

    async def watch(self, call: Awaitable[T]) -> T:
        """Await one request attempt, counting it; raise FatalError at the limit."""
        try:
            result = await call
        except UnreachableError as err:
            now = time.monotonic()
            if self.failures == 0:
                self.streak_start = now
            self.failures += 1
            if self.failures >= self.limit and now - self.streak_start >= self.min_streak_s:
                raise FatalError(f"could not reach {self.provider} at {self.where}: {self.failures} "
                                 f"connection attempts in a row failed ({err})") from None
            raise
        except ProviderError:
            self.failures = 0  # the server answered, even if with an error
            raise
        self.failures = 0
        return result
