"""`max_cost_usd` as a budget calls must fit in, not a line they stop at after crossing: a call
starts only if spend + expected cost of the calls in flight + its own stay within the limit (or
waits for calls in flight); the first call runs alone to learn the price. docs/service_llm.md (Cost).
"""
from __future__ import annotations

import asyncio

from llamaduo.service_llm.records import Usage


class Budget:
    """Admission control for paid calls under `limit_usd` (see the module docstring)."""

    def __init__(self, limit_usd: float, usage: Usage) -> None:
        self.limit_usd = limit_usd
        self.usage = usage
        self.in_flight_usd = 0.0
        self._released = asyncio.Event()

    async def admit(self, first_guess: float) -> float | None:
        """Wait until one more call fits; return the amount reserved for it, or None when it
        cannot fit even after every call in flight has finished. A call is expected to cost the
        mean of this run's calls so far; `first_guess` (from the price list) only sizes the
        first call's reservation."""
        while True:
            if self.usage.calls == 0:
                if self.in_flight_usd == 0:
                    cost = first_guess
                    break  # the first call: see the module docstring
                await self._released.wait()  # price still unknown: wait for the first reply
                continue
            cost = self.usage.cost_usd / self.usage.calls  # re-read after each wait: it moves
            if self.usage.cost_usd + cost > self.limit_usd:
                return None
            if self.usage.cost_usd + self.in_flight_usd + cost <= self.limit_usd:
                break
            await self._released.wait()  # in_flight_usd > 0 here, so a release will come
        self.in_flight_usd += cost
        return cost

    def release(self, reserved: float) -> None:
        """A call has finished or failed: wake the calls waiting for room. They resume at the
        event loop's next await, after the finished call's real cost is counted in `usage`."""
        self.in_flight_usd -= reserved
        self._released.set()
        self._released = asyncio.Event()
