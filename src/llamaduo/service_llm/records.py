"""The plain records that cross the service-LLM layer's boundary.

Stages see only these: never an SDK response object (DESIGN.md: one record for every call).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Optional, TypeVar

T = TypeVar("T")

# JobResult.status values
OK = "ok"
INVALID = "invalid"  # every reply (first ask + re-asks) failed the stage's schema
ERROR = "error"  # the call itself failed (retries exhausted, permanent API error)
SKIPPED_BUDGET = "skipped_budget"  # never called: --max-cost-usd was reached first
SKIPPED_OVERSIZE = "skipped_oversize"  # never called: the prompt exceeds max_input_tokens


class InvalidReply(ValueError):
    """A reply that does not satisfy the stage's schema. The message is the reason shown
    to the user and sent back to the model in the re-ask."""


@dataclass(frozen=True)
class RawCompletion:
    """What a provider's `complete` returns: one call's answer and usage."""

    text: str
    input_tokens: int
    output_tokens: int
    model: str
    finish_reason: str
    latency_s: float


@dataclass(frozen=True)
class Completion(RawCompletion):
    """One service-LLM call, priced (or a ledger hit standing in for it)."""

    cost_usd: float
    cached: bool = False


@dataclass(frozen=True)
class ResponseSchema:
    """The JSON object a reply must be, for providers with native structured output.

    Each adapter maps it to its wire form (OpenAI `response_format` json_schema strict,
    Anthropic a forced tool with this `input_schema`, Gemini `response_schema`), so the
    reply is exactly one object of this schema and no text of the model's choosing can sit
    beside it. `name` is the schema's / tool's name (letters, digits, `_`, `-`)."""

    name: str
    schema: dict = field(hash=False)
    description: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "schema": self.schema, "description": self.description}


@dataclass(frozen=True)
class Job:
    """One unit of work: a prompt and which sample of it (0, 1, ...) this is.

    `sample_index` is part of the ledger key, so repeats of the same prompt (eval repeats,
    several synthetic samples per seed) are distinct calls that each resume on their own.
    It is also sent as the sampling `seed` where the API has one (openai, gemini).
    `schema`, when set, asks the provider for native structured output (see ResponseSchema).
    `parse`, when set, replaces `run`'s parser for this job: a parser that must know the
    job's own data (e.g. the candidate text a judge may quote back, which must never be read
    as the judge's verdict).
    """

    prompt: str
    sample_index: int = 0
    schema: Optional[ResponseSchema] = None
    parse: Optional[Callable[[str], Any]] = field(default=None, compare=False)
    label: str = ""  # how errors name this job to the user, e.g. "row 17"; not part of any key
    #: the whole conversation (e.g. system + user), when more than one user turn is sent;
    #: `prompt` then only feeds estimates
    messages: Optional[tuple[dict, ...]] = None


@dataclass
class JobResult(Generic[T]):
    """What a Job produced. `value` is the parsed reply, or None with `error` saying why.

    A failed row is a failure with a reason: never an exception, never a score of 0.
    """

    value: Optional[T]
    error: Optional[str]
    completions: list[Completion] = field(default_factory=list)
    status: str = OK
    retries: int = 0
    #: True for a duplicate job served by an identical job's call (single-flight): its
    #: completions are that job's, so totals must count them once
    shared: bool = False

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def text(self) -> str:
        """The last raw reply text ('' if no call was made)."""
        return self.completions[-1].text if self.completions else ""

    @property
    def reasks(self) -> int:
        return max(0, len(self.completions) - 1)

    @property
    def cost_usd(self) -> float:
        return sum(c.cost_usd for c in self.completions if not c.cached)


@dataclass
class Usage:
    """Running totals, readable for a stage's summary (`ServiceLLM.usage`, `.last_run`).

    `calls` are requests that reached the provider and succeeded (paid); `cached` are ledger
    hits (free); `retries` counts retried attempts; `cost_usd` is new spend only; `shared`
    counts duplicate jobs answered by an identical job's call; `skipped_oversize` jobs whose
    prompt exceeded max_input_tokens (never sent).
    """

    calls: int = 0
    cached: int = 0
    retries: int = 0
    ok: int = 0
    failed: int = 0
    skipped_budget: int = 0
    skipped_oversize: int = 0
    shared: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    stopped_for_budget: bool = False

    def add(self, other: "Usage") -> None:
        for name in ("calls", "cached", "retries", "ok", "failed", "skipped_budget", "skipped_oversize",
                     "shared", "input_tokens", "output_tokens", "cost_usd"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.stopped_for_budget = self.stopped_for_budget or other.stopped_for_budget

    def as_dict(self) -> dict:
        return {
            "calls": self.calls,
            "cached": self.cached,
            "retries": self.retries,
            "ok": self.ok,
            "failed": self.failed,
            "skipped_budget": self.skipped_budget,
            "skipped_oversize": self.skipped_oversize,
            "shared": self.shared,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "stopped_for_budget": self.stopped_for_budget,
        }


@dataclass
class Estimate:
    """What `--dry-run` prints: calls that would be made (ledger hits excluded) and tokens/cost."""

    jobs: int
    calls: int
    cached: int
    input_tokens: int
    output_tokens_expected: int
    output_tokens_max: int
    cost_usd_expected: float
    cost_usd_max: float
    model: str
    priced: bool = True

    def summary(self) -> str:
        price = "" if self.priced else " (no price for this model in pricing.yaml: cost shown as 0)"
        return (
            f"dry run: {self.jobs} jobs -> {self.calls} calls to {self.model} "
            f"({self.cached} already in the ledger); ~{self.input_tokens:,} input tokens, "
            f"~{self.output_tokens_expected:,} output tokens expected (at most "
            f"{self.output_tokens_max:,}); estimated cost ${self.cost_usd_expected:.4f} "
            f"(at most ${self.cost_usd_max:.4f}) before re-asks and retries{price}"
        )


# --- errors the provider adapters raise (SDK exceptions never leave providers/) ----------
class ProviderError(Exception):
    """Base for a failed provider call."""


class TransientError(ProviderError):
    """Worth retrying: 429, 5xx, timeouts, dropped connections. `retry_after` is the
    server's Retry-After in seconds, when it sent one."""

    def __init__(self, message: str, retry_after: Optional[float] = None, status: Optional[int] = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class UnreachableError(TransientError):
    """The request never reached the provider: connection refused, DNS failure, connect
    timeout. The client stops the run after a few of these in a row (records nothing as a
    judgement) instead of retrying every row."""


class StructuredOutputRejected(ProviderError):
    """The server refused the structured-output fields of a request (e.g. an
    OpenAI-compatible server without `response_format`); the adapter retries as text."""


class PermanentError(ProviderError):
    """Retrying will not help for this request (e.g. 400, 404, a refused prompt)."""


class FatalError(ProviderError):
    """Retrying will not help for ANY request (rejected credentials): abort the run."""
