"""Stop a run whose provider cannot be reached at all, instead of retrying every row.

Why: with a wrong URL, a server that is down, or no DNS, every request fails to connect;
retrying each row `max_retries` times with backoff wastes minutes and then reads like a
judged result. A connection that was never made (refused, DNS failure, connect timeout:
`UnreachableError`) is counted across the whole run; any answer from the server, an HTTP
error included, resets the count. After `MAX_CONSECUTIVE_UNREACHABLE` in a row the run
stops with "could not reach <provider> at <url>" (a FatalError: exit 1). Finished work is
in the ledger, so a rerun after a short outage resumes where this one stopped.
"""
from __future__ import annotations

from typing import Awaitable, Optional, TypeVar

from src.service_llm.records import FatalError, ProviderError, UnreachableError

T = TypeVar("T")

MAX_CONSECUTIVE_UNREACHABLE = 4


class Reachability:
    """Counts consecutive never-connected attempts over a run (one event loop: no lock)."""

    def __init__(self, provider: str, base_url: Optional[str],
                 limit: int = MAX_CONSECUTIVE_UNREACHABLE) -> None:
        self.provider = provider
        self.where = base_url or "its default endpoint"
        self.limit = limit
        self.failures = 0

    async def watch(self, call: Awaitable[T]) -> T:
        """Await one request attempt, counting it; raise FatalError at the limit."""
        try:
            result = await call
        except UnreachableError as err:
            self.failures += 1
            if self.failures >= self.limit:
                raise FatalError(f"could not reach {self.provider} at {self.where}: {self.failures} "
                                 f"connection attempts in a row failed ({err})") from None
            raise
        except ProviderError:
            self.failures = 0  # the server answered, even if with an error
            raise
        self.failures = 0
        return result
