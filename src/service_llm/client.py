"""`ServiceLLM`: the stages' single entry point, tying providers, pacing, retries, the ledger,
structured re-asks and cost control together.

Why one synchronous `run(jobs, parse)` call: the stages are plain scripts; the async
machinery (bounded concurrency, pacing, retries) stays inside this layer, and a stage gets
back one `JobResult` per job, in input order, with nothing to clean up.
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

from tqdm.auto import tqdm

from src.errors import RunFailed, UsageError
from src.service_llm.args import ServiceLLMArgs
from src.service_llm.ledger import Ledger, ledger_key
from src.service_llm.pricing import Pricing, estimate_tokens
from src.service_llm.providers import (
    Provider,
    ProviderSpec,
    make_provider,
    resolve_spec,
)
from src.service_llm.budget import Budget
from src.service_llm.records import (
    ERROR,
    FatalError,
    INVALID,
    OK,
    SKIPPED_BUDGET,
    Completion,
    Estimate,
    InvalidReply,
    Job,
    JobResult,
    Usage,
)
from src.service_llm.scheduler import CallFailed, Pacer, call_with_retries
from src.service_llm.structured import reask_message

logger = logging.getLogger("llamaduo.service_llm")
T = TypeVar("T")

DEFAULT_EXPECTED_OUTPUT_TOKENS = 256


def default_ledger_location() -> Path:
    root = os.environ.get("LLAMADUO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "llamaduo")
    return Path(root) / "service_llm_ledger.sqlite"


def _check_values(args: ServiceLLMArgs, workers: int) -> None:
    """Range checks on the numeric keys (the config parser checks only types)."""
    if workers < 1:
        raise UsageError(f"workers must be >= 1, got {workers}")
    if args.rate_limit_per_minute < 0:
        raise UsageError(f"rate_limit_per_minute must be >= 0 (0 = no limit), got {args.rate_limit_per_minute}")
    if args.tokens_per_minute < 0:
        raise UsageError(f"tokens_per_minute must be >= 0 (0 = no limit), got {args.tokens_per_minute}")
    if not args.request_timeout_s > 0:
        raise UsageError(f"request_timeout_s must be > 0, got {args.request_timeout_s}")
    if args.max_retries < 0:
        raise UsageError(f"max_retries must be >= 0, got {args.max_retries}")
    if args.max_reasks < 0:
        raise UsageError(f"max_reasks must be >= 0, got {args.max_reasks}")
    if args.max_cost_usd is not None and args.max_cost_usd <= 0:
        raise UsageError(f"max_cost_usd must be > 0 (omit it for no limit), got {args.max_cost_usd}")
    if args.no_cache and args.refresh_cache:
        raise UsageError("no_cache and refresh_cache exclude each other")


@dataclass
class _RunState:
    """Mutable per-run bookkeeping shared by the worker coroutines (one event loop: no locks)."""

    usage: Usage
    bar: tqdm
    budget: Optional[Budget] = None

    def refresh_bar(self) -> None:
        u = self.usage
        self.bar.set_postfix_str(
            f"ok={u.ok} retried={u.retries} failed={u.failed} cached={u.cached} "
            f"tok={u.input_tokens + u.output_tokens:,} ${u.cost_usd:.4f}",
            refresh=False,
        )


class ServiceLLM:
    """A configured service-LLM client. Build it with `from_args` (validates, no network)."""

    def __init__(
        self,
        spec: ProviderSpec,
        *,
        workers: int,
        rate_limit_per_minute: int,
        tokens_per_minute: int,
        max_retries: int,
        max_reasks: int,
        ledger_path: Optional[Path],
        refresh_cache: bool,
        max_cost_usd: Optional[float],
        pricing: Pricing,
        show_progress: bool = True,
    ) -> None:
        self.spec = spec
        self.workers = workers
        self.rate_limit_per_minute = rate_limit_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.max_retries = max_retries
        self.max_reasks = max_reasks
        self.ledger_path = ledger_path
        self.refresh_cache = refresh_cache
        self.max_cost_usd = max_cost_usd
        self.pricing = pricing
        self.show_progress = show_progress
        #: first backoff ceiling in seconds (doubles per retry, capped at 60 s); tests shorten it
        self.backoff_initial_s = 1.0
        self.usage = Usage()  # cumulative over every run() of this object
        self.last_run = Usage()  # the most recent run() only
        self.pacer_log: list[tuple[float, int]] = []  # (monotonic start, reserved tokens): for tests
        self._ledger: Optional[Ledger] = None
        self._provider: Optional[Provider] = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_args(
        cls,
        args: ServiceLLMArgs,
        workers: int,
        *,
        default_ledger_path: str | Path | None = None,
        show_progress: bool = True,
    ) -> "ServiceLLM":
        """Validate everything that can be validated offline and build the client.

        Raises UsageError (exit 2) for: an unknown provider, a missing key or credentials,
        a missing gen-config file, a base URL that is not a URL, out-of-range values, an
        unreadable pricing file, or `max_cost_usd` with a model that has no price.
        Makes no network call and loads no model.
        """
        _check_values(args, workers)
        spec = resolve_spec(args)
        pricing = Pricing.load(args.pricing_path) if spec.provider != "local" else Pricing.free()
        if args.max_cost_usd is not None and pricing.price(spec.model) is None:
            raise UsageError(
                f"max_cost_usd is set but {args.pricing_path} has no price for model "
                f"'{spec.model}'; add it (USD per 1M input/output tokens)"
            )
        if args.no_cache:
            ledger_path = None
        else:
            ledger_path = Path(args.ledger_path or default_ledger_path or default_ledger_location())
        return cls(
            spec,
            workers=workers,
            rate_limit_per_minute=args.rate_limit_per_minute,
            tokens_per_minute=args.tokens_per_minute,
            max_retries=args.max_retries,
            max_reasks=args.max_reasks,
            ledger_path=ledger_path,
            refresh_cache=args.refresh_cache,
            max_cost_usd=args.max_cost_usd,
            pricing=pricing,
            show_progress=show_progress,
        )

    @property
    def model(self) -> str:
        """The model name, as the stages record it (e.g. the `evaluators` column)."""
        return self.spec.model

    @property
    def provider(self) -> str:
        return self.spec.provider

    def describe(self) -> str:
        """A one-line, key-free description for logs and reports."""
        where = f" at {self.spec.base_url}" if self.spec.base_url else ""
        rpm = self.rate_limit_per_minute or "unlimited"
        return f"{self.spec.provider}/{self.spec.model}{where} (workers={self.workers}, rpm={rpm})"

    def _new_provider(self) -> Provider:
        """The provider adapter for one run (a subclass may spread requests over servers)."""
        return make_provider(self.spec)

    # ------------------------------------------------------------------ ledger & keys
    def _open_ledger(self) -> Optional[Ledger]:
        if self.ledger_path is None:
            return None
        if self._ledger is None:
            self._ledger = Ledger(self.ledger_path)
        return self._ledger

    def close(self) -> None:
        """Close the ledger (also done at interpreter exit; safe to call twice)."""
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def _key(self, messages: Sequence[dict], sample_index: int) -> str:
        return ledger_key(
            provider=self.spec.provider,
            model=self.spec.model,
            gen_config=self.spec.gen_config,
            messages=messages,
            sample_index=sample_index,
        )

    # ------------------------------------------------------------------ estimate
    def estimate(self, jobs: Sequence[Job], expected_output_tokens: Optional[int] = None) -> Estimate:
        """Count the calls `run(jobs)` would make (ledger hits excluded) and estimate tokens
        and cost, without calling anything. `expected_output_tokens` is the typical reply
        length for this stage (default 256); the maximum uses the gen config's token cap."""
        # a dry run creates no file: only an existing ledger is consulted
        exists = self.ledger_path is not None and self.ledger_path.exists()
        ledger = self._open_ledger() if exists and not self.refresh_cache else None
        cached = 0
        input_tokens = 0
        calls = 0
        for job in jobs:
            messages = [{"role": "user", "content": job.prompt}]
            if ledger is not None and ledger.get(self._key(messages, job.sample_index)) is not None:
                cached += 1
                continue
            calls += 1
            input_tokens += estimate_tokens(job.prompt)
        per_call = expected_output_tokens or DEFAULT_EXPECTED_OUTPUT_TOKENS
        max_out = self.spec.max_output_tokens
        expected_out = calls * min(per_call, max_out)
        most_out = calls * max_out
        return Estimate(
            jobs=len(jobs),
            calls=calls,
            cached=cached,
            input_tokens=input_tokens,
            output_tokens_expected=expected_out,
            output_tokens_max=most_out,
            cost_usd_expected=self.pricing.cost(self.spec.model, input_tokens, expected_out),
            cost_usd_max=self.pricing.cost(self.spec.model, input_tokens, most_out),
            model=self.spec.model,
            priced=self.pricing.price(self.spec.model) is not None,
        )

    # ------------------------------------------------------------------ run
    def run(
        self,
        jobs: Sequence[Job],
        parse: Callable[[str], T],
        desc: str = "service LLM",
        on_result: Optional[Callable[[int, JobResult[T]], None]] = None,
    ) -> list[JobResult[T]]:
        """Run every job and return one JobResult per job, in input order.

        Each reply goes through `parse` (raise InvalidReply, or any exception, to reject
        it); a rejected reply is re-asked up to `max_reasks` times, then recorded as a
        failure with its reason. Calls that still fail after `max_retries` retries are
        failures too. A job whose call would take the spend past `max_cost_usd` does not start
        (src/service_llm/budget.py); it comes back with status SKIPPED_BUDGET and
        `last_run.stopped_for_budget` is True.
        Raises RunFailed only for errors that doom every call (e.g. rejected credentials).
        `on_result(index, result)`, if given, is called as each job finishes (in completion
        order), e.g. to append rows to a partial file; every reply is already in the ledger.
        Not callable from inside a running event loop; use `arun` there.
        """
        return asyncio.run(self.arun(jobs, parse, desc, on_result))

    async def arun(
        self,
        jobs: Sequence[Job],
        parse: Callable[[str], T],
        desc: str = "service LLM",
        on_result: Optional[Callable[[int, JobResult[T]], None]] = None,
    ) -> list[JobResult[T]]:
        """The async form of `run` (same contract)."""
        usage = Usage()
        self.last_run = usage
        ledger = self._open_ledger()
        provider = self._new_provider()
        pacer = Pacer(self.rate_limit_per_minute, self.tokens_per_minute, log=self.pacer_log)
        results: list[Optional[JobResult[T]]] = [None] * len(jobs)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(jobs)):
            queue.put_nowait(i)
        bar = tqdm(total=len(jobs), desc=desc, unit="job", disable=not self.show_progress,
                   dynamic_ncols=True, mininterval=0.5)
        budget = Budget(self.max_cost_usd, usage) if self.max_cost_usd is not None else None
        state = _RunState(usage=usage, bar=bar, budget=budget)

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                results[i] = await self._run_job(jobs[i], parse, provider, pacer, ledger, state)
                if results[i].status == OK:
                    usage.ok += 1
                elif results[i].status == SKIPPED_BUDGET:
                    usage.skipped_budget += 1
                else:
                    usage.failed += 1
                state.refresh_bar()
                bar.update(1)
                if on_result is not None:
                    on_result(i, results[i])

        try:
            tasks = [asyncio.create_task(worker()) for _ in range(min(self.workers, max(1, len(jobs))))]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        except FatalError as err:
            raise RunFailed(
                f"{self.spec.provider}/{self.spec.model}: {err} (finished work is kept in the ledger)"
            ) from err
        finally:
            bar.close()
            await provider.aclose()
            self.usage.add(usage)
        if usage.stopped_for_budget:
            logger.warning(
                "max_cost_usd=%.4f reached: %d job(s) were not run; finished work is kept, "
                "a rerun with a higher budget resumes from the ledger",
                self.max_cost_usd, usage.skipped_budget,
            )
        return results  # type: ignore[return-value]

    async def _run_job(
        self,
        job: Job,
        parse: Callable[[str], T],
        provider: Provider,
        pacer: Pacer,
        ledger: Optional[Ledger],
        state: _RunState,
    ) -> JobResult[T]:
        """First ask, then re-asks with the invalid reply and the reason in the history."""
        messages: list[dict] = list(job.messages) if job.messages else [{"role": "user", "content": job.prompt}]
        completions: list[Completion] = []
        retries_before = state.usage.retries
        reason = ""
        for _attempt in range(self.max_reasks + 1):
            outcome = await self._complete(messages, job.sample_index, provider, pacer, ledger, state)
            if isinstance(outcome, JobResult):  # a call error or the budget: stop this job
                outcome.completions = completions
                outcome.retries = state.usage.retries - retries_before
                return outcome  # type: ignore[return-value]
            completions.append(outcome)
            try:
                value = parse(outcome.text)
            except InvalidReply as err:
                reason = str(err)
            except Exception as err:  # a stage parser bug must not crash a paid run
                reason = f"{type(err).__name__}: {err}"
            else:
                return JobResult(value, None, completions, OK, state.usage.retries - retries_before)
            if outcome.finish_reason in ("length", "max_tokens", "MAX_TOKENS"):
                reason += f" (the reply was cut off at the token limit: finish_reason={outcome.finish_reason})"
            messages = messages + [
                {"role": "assistant", "content": outcome.text or "(empty reply)"},
                {"role": "user", "content": reask_message(reason)},
            ]
        return JobResult(
            None,
            f"invalid reply after {self.max_reasks + 1} attempt(s): {reason}",
            completions,
            INVALID,
            state.usage.retries - retries_before,
        )

    def _priced_guess(self, est_in: int) -> float:
        """A call's cost before any reply has come back: its input estimate plus the usual output."""
        out = min(DEFAULT_EXPECTED_OUTPUT_TOKENS, self.spec.max_output_tokens)
        return self.pricing.cost(self.spec.model, est_in, out)

    async def _complete(
        self,
        messages: list[dict],
        sample_index: int,
        provider: Provider,
        pacer: Pacer,
        ledger: Optional[Ledger],
        state: _RunState,
    ) -> Completion | JobResult:
        """One logical call: a ledger hit, or a paced, retried, recorded provider call."""
        key = self._key(messages, sample_index)
        if ledger is not None and not self.refresh_cache:
            hit = ledger.get(key)
            if hit is not None:
                state.usage.cached += 1
                return hit
        prompt_text = "\n".join(m["content"] for m in messages)
        est_in = estimate_tokens(prompt_text)
        reserved: float | None = 0.0
        if state.budget is not None:
            reserved = await state.budget.admit(self._priced_guess(est_in))
            if reserved is None:
                state.usage.stopped_for_budget = True
                return JobResult(None, f"not run: it would take the spend past max_cost_usd={self.max_cost_usd}",
                                 [], SKIPPED_BUDGET)
        reserve = est_in + self.spec.max_output_tokens

        def on_retry(reason: str) -> None:
            state.usage.retries += 1
            state.refresh_bar()
            logger.debug("retrying: %s", reason)

        try:
            raw = await call_with_retries(
                lambda: provider.complete(messages, sample_index),
                pacer=pacer,
                reserve_tokens=reserve,
                max_retries=self.max_retries,
                on_retry=on_retry,
                backoff_initial_s=self.backoff_initial_s,
            )
        except CallFailed as err:
            return JobResult(None, str(err), [], ERROR)
        finally:
            if state.budget is not None:
                state.budget.release(reserved)
        completion = Completion(
            text=raw.text,
            input_tokens=raw.input_tokens,
            output_tokens=raw.output_tokens,
            model=raw.model or self.spec.model,
            finish_reason=raw.finish_reason,
            latency_s=raw.latency_s,
            cost_usd=self.pricing.cost(self.spec.model, raw.input_tokens, raw.output_tokens),
            cached=False,
        )
        if ledger is not None:  # persisted before the result is used (crash-safe resume)
            ledger.put(key, completion, provider=self.spec.provider, sample_index=sample_index,
                       messages=messages)
        u = state.usage
        u.calls += 1
        u.input_tokens += completion.input_tokens
        u.output_tokens += completion.output_tokens
        u.cost_usd += completion.cost_usd
        return completion
