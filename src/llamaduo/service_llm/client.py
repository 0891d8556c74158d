"""`ServiceLLM`: the stages' single entry point, tying providers, pacing, retries, the ledger,
structured re-asks and cost control together.

Why one synchronous `run(jobs, parse)` call: the stages are plain scripts; the async
machinery (bounded concurrency, pacing, retries) stays inside this layer, and a stage gets
back one `JobResult` per job, in input order, with nothing to clean up.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

from tqdm.auto import tqdm

from llamaduo.errors import RunFailed, UsageError
from llamaduo.service_llm.args import ServiceLLMArgs
from llamaduo.service_llm import sidecar
from llamaduo.service_llm.ledger import Ledger, LedgerWriteError, check_location, ledger_key
from llamaduo.service_llm.limits import default_max_input_tokens
from llamaduo.service_llm.pricing import Pricing, estimate_tokens
from llamaduo.service_llm.providers import Provider, ProviderSpec, get, make_provider, resolve_spec
from llamaduo.service_llm.budget import Budget
from llamaduo.service_llm.records import (
    ERROR,
    FatalError,
    INVALID,
    OK,
    SKIPPED_BUDGET,
    SKIPPED_OVERSIZE,
    Completion,
    Estimate,
    InvalidReply,
    Job,
    JobResult,
    ResponseSchema,
    Usage,
)
from llamaduo.service_llm.reachability import Reachability
from llamaduo.service_llm.scheduler import CallFailed, Pacer, call_with_retries
from llamaduo.service_llm.structured import reask_message

logger = logging.getLogger("llamaduo.service_llm")
T = TypeVar("T")

DEFAULT_EXPECTED_OUTPUT_TOKENS = 256


def default_ledger_location() -> Path:
    root = os.environ.get("LLAMADUO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "llamaduo")
    return Path(root) / "service_llm_ledger.sqlite"


HOSTED_RATE_LIMIT_PER_MINUTE = 60


def effective_rate_limit(configured: int | None, base_url: str | None) -> int:
    """`rate_limit_per_minute` as set, else 0 (no pacing) for a loopback base URL and 60 for a
    hosted API. WHY: pacing a local server at 60/min made 105 calls take 1 min 45 s."""
    if configured is not None:
        return configured
    return 0 if is_loopback_url(base_url) else HOSTED_RATE_LIMIT_PER_MINUTE


def is_loopback_url(url: str | None) -> bool:
    """Whether a base URL points at this machine (localhost, 127.0.0.0/8, ::1)."""
    import ipaddress
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "") if url else ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_values(args: ServiceLLMArgs, workers: int) -> None:
    """Range checks on the numeric keys (the config parser checks only types)."""
    if workers < 1:
        raise UsageError(f"workers must be >= 1, got {workers}")
    if args.rate_limit_per_minute is not None and args.rate_limit_per_minute < 0:
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
    if args.max_input_tokens < 0:
        raise UsageError(f"max_input_tokens must be >= 0 (0 = derived from the model), got {args.max_input_tokens}")
    if args.oversize_rows not in ("refuse", "skip"):
        raise UsageError(f"oversize_rows must be 'refuse' or 'skip', got '{args.oversize_rows}'")


@dataclass
class _RunState:
    """Mutable per-run bookkeeping shared by the worker coroutines (one event loop: no locks)."""

    usage: Usage
    bar: tqdm
    reach: Reachability  # stops the run when the provider cannot be reached at all
    budget: Optional[Budget] = None
    #: set when a ledger write failed: no new call starts, the paid answers go to a sidecar
    ledger_error: Optional[str] = None
    interrupted: bool = False  # the first Ctrl-C: finish (and store) the calls in flight, then stop

    def refresh_bar(self) -> None:
        u = self.usage
        self.bar.set_postfix_str(
            f"ok={u.ok} retried={u.retries} failed={u.failed} cached={u.cached} "
            f"tok={u.input_tokens + u.output_tokens:,} ${u.cost_usd:.4f}",
            refresh=False,
        )


def _interrupt_gracefully(state: _RunState, tasks: list[asyncio.Task]) -> bool:
    """Make the first Ctrl-C stop new calls but let the ones in flight finish and reach the
    ledger (an answer being generated is billed either way); a second Ctrl-C cancels them.
    Returns False where a handler cannot be installed (not the main thread, not Unix)."""
    loop = asyncio.get_running_loop()

    def on_sigint() -> None:
        if state.interrupted:
            for task in tasks:
                task.cancel()
            return
        state.interrupted = True
        logger.warning("interrupted: finishing the calls in flight so none is paid twice (Ctrl-C again to abort)")

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    return True



def first_messages(job: Job) -> list[dict]:
    """The conversation a job's first ask sends: its own messages (system + user, e.g. batch
    inference through an OpenAI-compatible server) or one user turn. The ledger key, the
    single-flight grouping and the dry-run count all read it, so they agree with the call."""
    return list(job.messages) if job.messages else [{"role": "user", "content": job.prompt}]

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
        max_input_tokens: int = 0,
        oversize_rows: str = "refuse",
        backoff_initial_s: float = 1.0,
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
        self.max_input_tokens = max_input_tokens or default_max_input_tokens(spec.model, spec.max_output_tokens)
        self.oversize_rows = oversize_rows
        #: the first retry's backoff ceiling in seconds (doubles per retry, capped at 60 s)
        self.backoff_initial_s = backoff_initial_s
        self.usage = Usage()  # cumulative over every run() of this object
        self.last_run = Usage()  # the most recent run() only
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
        backoff_initial_s: float = 1.0,
    ) -> "ServiceLLM":
        """Validate everything that can be validated offline and build the client.

        Raises UsageError (exit 2) for: an unknown provider, a missing key or credentials,
        a missing gen-config file, a base URL that is not a URL, out-of-range values, an
        unreadable pricing file, or `max_cost_usd` with a model that has no price.
        Makes no network call and loads no model.
        """
        _check_values(args, workers)
        spec = resolve_spec(args)
        pricing = Pricing.free() if get(spec.provider).free else Pricing.load(args.pricing_path)
        if args.max_cost_usd is not None and pricing.price(spec.model) is None:
            raise UsageError(
                f"max_cost_usd is set but there is no price for model '{spec.model}' (neither genai-prices "
                f"nor the pricing_path YAML knows it; no prefix guess is made); write a YAML with "
                f"'models: {{{spec.model}: {{input: .., output: ..}}}}' (USD per 1M tokens) and set pricing_path to it"
            )
        if args.no_cache:
            ledger_path = None
        else:
            ledger_path = Path(args.ledger_path or default_ledger_path or default_ledger_location())
        client = cls(
            spec,
            workers=workers,
            rate_limit_per_minute=effective_rate_limit(args.rate_limit_per_minute, spec.base_url),
            tokens_per_minute=args.tokens_per_minute,
            max_retries=args.max_retries,
            max_reasks=args.max_reasks,
            ledger_path=ledger_path,
            refresh_cache=args.refresh_cache,
            max_cost_usd=args.max_cost_usd,
            pricing=pricing,
            show_progress=show_progress,
            max_input_tokens=args.max_input_tokens,
            oversize_rows=args.oversize_rows,
            backoff_initial_s=backoff_initial_s,
        )
        if ledger_path is not None and not args.dry_run:
            # a ledger that cannot be written is exit 2 now, not a traceback after paid calls;
            # an existing file is opened, schema-checked and write-probed, a new one is created
            # (and probed) by the first run() before its first call
            check_location(ledger_path, create=False)
            if ledger_path.exists():
                client._ledger = Ledger(ledger_path)
        return client

    @property
    def model(self) -> str:
        """The model name, as the stages record it (e.g. the `evaluators` column)."""
        return self.spec.model

    @property
    def provider(self) -> str:
        return self.spec.provider

    def describe(self) -> str:
        """A one-line, key-free description for logs and reports."""
        from llamaduo.redact import redact

        where = f" at {redact(self.spec.base_url)}" if self.spec.base_url else ""
        rpm = self.rate_limit_per_minute or "unlimited"
        return f"{self.spec.provider}/{self.spec.model}{where} (workers={self.workers}, rpm={rpm})"

    def _new_provider(self) -> Provider:
        """The provider adapter for one run (a subclass may spread requests over servers)."""
        return make_provider(self.spec)

    def _new_pacer(self) -> Pacer:
        """The RPM/TPM pacer for one run."""
        return Pacer(self.rate_limit_per_minute, self.tokens_per_minute)

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

    def _key(self, messages: Sequence[dict], sample_index: int, schema: Optional[ResponseSchema] = None) -> str:
        # a schema changes the request (and the reply's shape): it is part of the key
        gen = self.spec.gen_config if schema is None else {**self.spec.gen_config, "response_schema": schema.as_dict()}
        return ledger_key(
            provider=self.spec.provider,
            model=self.spec.model,
            gen_config=gen,
            messages=messages,
            sample_index=sample_index,
        )

    # ------------------------------------------------------------------ estimate
    def estimate(self, jobs: Sequence[Job], expected_output_tokens: Optional[int] = None) -> Estimate:
        """Count the calls `run(jobs)` would make (ledger hits excluded) and estimate tokens
        and cost, without calling anything. `expected_output_tokens` is the typical reply
        length for this stage (default 256); the maximum uses the gen config's token cap."""
        self.oversize_jobs(jobs)  # refuse mode: the dry run says so too
        # a dry run creates no file: only an existing ledger is consulted
        exists = self.ledger_path is not None and self.ledger_path.exists()
        ledger = self._open_ledger() if exists and not self.refresh_cache else None
        cached = 0
        input_tokens = 0
        calls = 0
        seen: set[str] = set()
        for job in jobs:
            key = self._key(first_messages(job), job.sample_index, job.schema)
            if key in seen or estimate_tokens(job.prompt) > self.max_input_tokens:
                continue  # a duplicate shares its twin's call; an oversize prompt is never sent
            seen.add(key)
            if ledger is not None and ledger.get(key) is not None:
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
        (src/llamaduo/service_llm/budget.py); it comes back with status SKIPPED_BUDGET and
        `last_run.stopped_for_budget` is True.
        Raises RunFailed only for errors that doom every call (e.g. rejected credentials).
        `on_result(index, result)`, if given, is called as each job finishes (in completion
        order), e.g. to append rows to a partial file; every reply is already in the ledger.
        Not callable from inside a running event loop; use `arun` there.
        """
        try:
            return asyncio.run(self.arun(jobs, parse, desc, on_result))
        except asyncio.CancelledError:  # a second Ctrl-C cancelled the calls in flight
            raise KeyboardInterrupt from None

    async def arun(
        self,
        jobs: Sequence[Job],
        parse: Callable[[str], T],
        desc: str = "service LLM",
        on_result: Optional[Callable[[int, JobResult[T]], None]] = None,
    ) -> list[JobResult[T]]:
        """The async form of `run` (same contract)."""
        oversize = self.oversize_jobs(jobs)
        usage = Usage()
        self.last_run = usage
        ledger = self._open_ledger()
        provider = self._new_provider()
        pacer = self._new_pacer()
        results: list[Optional[JobResult[T]]] = [None] * len(jobs)
        leaders, followers = self._single_flight(jobs, skip=oversize)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in leaders:
            queue.put_nowait(i)
        bar = tqdm(total=len(jobs), desc=desc, unit="job", disable=not self.show_progress,
                   dynamic_ncols=True, mininterval=0.5)
        budget = Budget(self.max_cost_usd, usage) if self.max_cost_usd is not None else None
        state = _RunState(usage=usage, bar=bar, budget=budget,
                          reach=Reachability(self.spec.provider, self.spec.base_url))

        def finish(i: int, result: JobResult[T]) -> None:
            results[i] = result
            if result.shared:
                usage.shared += 1
            if result.status == OK:
                usage.ok += 1
            elif result.status == SKIPPED_BUDGET:
                usage.skipped_budget += 1
            elif result.status == SKIPPED_OVERSIZE:
                usage.skipped_oversize += 1
            else:
                usage.failed += 1
            state.refresh_bar()
            bar.update(1)
            if on_result is not None:
                on_result(i, result)

        for i in oversize:
            finish(i, JobResult(None, f"not sent: ~{estimate_tokens(jobs[i].prompt):,} input tokens > "
                                      f"max_input_tokens={self.max_input_tokens:,}", [], SKIPPED_OVERSIZE))

        async def worker() -> None:
            # a ledger that stopped writing, or Ctrl-C: start nothing new
            while state.ledger_error is None and not state.interrupted:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                result = await self._run_job(jobs[i], parse, provider, pacer, ledger, state)
                finish(i, result)
                for j in followers.get(i, ()):  # identical jobs share this one call
                    finish(j, dataclasses.replace(result, shared=True))

        try:
            tasks = [asyncio.create_task(worker()) for _ in range(min(self.workers, max(1, len(leaders))))]
            graceful = _interrupt_gracefully(state, tasks)
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
            if graceful:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
            bar.close()
            await provider.aclose()
            self.usage.add(usage)
        if state.interrupted:
            raise KeyboardInterrupt  # after every answer in flight was stored: the rerun repeats none
        if state.ledger_error is not None:
            raise RunFailed(self._save_unsaved(ledger, state))
        if usage.stopped_for_budget:
            logger.warning(
                "max_cost_usd=%.4f reached: %d job(s) were not run; finished work is kept, "
                "a rerun with a higher budget resumes from the ledger",
                self.max_cost_usd, usage.skipped_budget,
            )
        if oversize:
            logger.warning("%d job(s) were not sent: their prompt exceeds max_input_tokens=%d",
                           len(oversize), self.max_input_tokens)
        return results  # type: ignore[return-value]

    def oversize_jobs(self, jobs: Sequence[Job]) -> list[int]:
        """Indices of jobs whose prompt exceeds max_input_tokens. With `oversize_rows: refuse`
        the first one is a UsageError (exit 2), raised before any call is made."""
        over = [i for i, job in enumerate(jobs) if estimate_tokens(job.prompt) > self.max_input_tokens]
        if over and self.oversize_rows == "refuse":
            job = jobs[over[0]]
            name = job.label or f"job {over[0]}"
            raise UsageError(
                f"{name}: its prompt is ~{estimate_tokens(job.prompt):,} tokens, over max_input_tokens="
                f"{self.max_input_tokens:,} for {self.spec.model} ({len(over)} such prompt(s)); shorten "
                f"the input, raise max_input_tokens, or set oversize_rows: skip"
            )
        return over

    def _single_flight(self, jobs: Sequence[Job], skip: Sequence[int]) -> tuple[list[int], dict[int, list[int]]]:
        """The first job of each distinct request (the leaders, which are called) and, per
        leader, the later identical jobs that share its answer. Identical means the same
        ledger key: provider, model, generation config, messages and sample index. Without
        this, identical rows paid once each and the last ledger write won, so a rerun
        reported different numbers from the run it resumed."""
        first: dict[str, int] = {}
        followers: dict[int, list[int]] = {}
        skipped = set(skip)
        for i, job in enumerate(jobs):
            if i in skipped:
                continue
            key = self._key(first_messages(job), job.sample_index, job.schema)
            if key in first:
                followers.setdefault(first[key], []).append(i)
            else:
                first[key] = i
        return list(first.values()), followers

    def _save_unsaved(self, ledger: Optional[Ledger], state: _RunState) -> str:
        """Write the paid answers the ledger could not take to a sidecar; the one-line reason."""
        rows = ledger.paid_rows() if ledger is not None else []
        try:
            where = sidecar.save(self.ledger_path, rows)
        except OSError as err:
            return (f"the ledger {self.ledger_path} stopped accepting writes ({state.ledger_error}) and "
                    f"{len(rows)} paid answer(s) could not be saved anywhere: {err}")
        return (f"the ledger {self.ledger_path} stopped accepting writes ({state.ledger_error}); no new "
                f"call was started, and {len(rows)} paid answer(s) were saved to {where}, which the next "
                f"run imports")

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
        messages = first_messages(job)
        completions: list[Completion] = []
        retries_before = state.usage.retries
        reason = ""
        parse = job.parse or parse
        for _attempt in range(self.max_reasks + 1):
            outcome = await self._complete(messages, job.sample_index, provider, pacer, ledger, state, job.schema)
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
        schema: Optional[ResponseSchema] = None,
    ) -> Completion | JobResult:
        """One logical call: a ledger hit, or a paced, retried, recorded provider call."""
        key = self._key(messages, sample_index, schema)
        if ledger is not None and not self.refresh_cache:
            hit = ledger.get(key)
            if hit is not None:
                state.usage.cached += 1
                return hit
        if state.ledger_error is not None:  # nothing new is paid for once the ledger fails
            return JobResult(None, f"not run: the ledger stopped accepting writes ({state.ledger_error})", [], ERROR)
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
                lambda: state.reach.watch(provider.complete(messages, sample_index, schema)),
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
            try:
                ledger.put(key, completion, provider=self.spec.provider, sample_index=sample_index,
                           messages=messages)
            except LedgerWriteError as err:  # kept in memory by the ledger; saved at the end
                if state.ledger_error is None:
                    logger.error("ledger write failed (%s): no new call starts", err)
                state.ledger_error = str(err)
        u = state.usage
        u.calls += 1
        u.input_tokens += completion.input_tokens
        u.output_tokens += completion.output_tokens
        u.cost_usd += completion.cost_usd
        return completion
