"""The judges behind evaluation.py, chosen by name in one place (`make_judge`).

- `LLMJudge`: a service LLM (any provider of llamaduo.service_llm) given the contract's prompt,
  asked for the contract's reply schema, read by the contract's parser. Rate limits, retries,
  re-asks, the resumable ledger and cost all live in the service-LLM layer.
- `ReferenceJudge` (llamaduo.judging.reference): the offline, free, deterministic stand-in,
  selected by the name `reference`.

Both take the rows and the `[eval]` template and hand back a `contract.JudgeOutcome`, so the
stage never asks which judge it holds.
"""
from __future__ import annotations

import difflib
import functools
import logging
import threading
from pathlib import Path
from typing import Any, Protocol, Sequence

from datasets import Dataset

from llamaduo.delimiters import delimiter_tags, neutralize_tags
from llamaduo.errors import UsageError
from llamaduo.judging.contract import (
    INPUT_COLUMNS,
    JUDGE_SCHEMA,
    REPLY_TOKENS,
    JudgeOutcome,
    RepeatScore,
    parse_judgement,
    render_prompts,
)
from llamaduo.judging.reference import ReferenceJudge
from llamaduo.service_llm import Job, ServiceLLM, ServiceLLMArgs, providers

logger = logging.getLogger("llamaduo.evaluation")

REFERENCE = "reference"
#: No judge at all: the task metric alone decides (llamaduo.judging.task_metrics).
NONE = "none"


class Judge(Protocol):
    """What evaluation.py needs of a judge."""

    def estimate(self, rows: Dataset, template: str, repeat: int) -> str:
        """The --dry-run report: what judging `rows` would call and cost (nothing is called)."""

    def judge(self, rows: Dataset, template: str, repeat: int) -> JudgeOutcome:
        """Judge every row `repeat` times (a deterministic judge may do it once)."""

    def close(self) -> None:
        """Release connections and files."""


def judge_names() -> tuple[str, ...]:
    """Every valid `service_llm_provider` of the evaluation: the providers, then `reference`."""
    return (*providers.names(), NONE, REFERENCE)  # the live registry: a registered provider is a judge too


def check_judge_name(name: str) -> None:
    """UsageError (exit 2) for an unknown judge, with the closest valid name as a hint."""
    names = judge_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UsageError(f"unknown service_llm_provider '{name}'{hint} (choose one of: {', '.join(names)})")


def make_judge(args: ServiceLLMArgs, *, workers: int, ledger_path: Path, batch_size: int) -> Judge:
    """The judge named by `args.service_llm_provider`: `reference` is the offline
    ReferenceJudge; `none` is NoJudge; any other name is the LLM judge through that provider
    (built fail-fast: a missing key or a bad setting is a UsageError here, before any data is
    loaded)."""
    check_judge_name(args.service_llm_provider)
    batch_size = max(batch_size, 1)
    if args.service_llm_provider == REFERENCE:
        return ReferenceJudge(batch_size=batch_size)
    if args.service_llm_provider == NONE:
        return NoJudge()
    llm = ServiceLLM.from_args(args, workers=workers, default_ledger_path=ledger_path)
    return LLMJudge(llm, batch_size=batch_size)


def _import_matplotlib() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


class NoJudge:
    """`service_llm_provider: none`: judges nothing, calls nothing, costs nothing. Every row
    comes back with no judgement (not a failed one), so the judge columns are null and the
    verdict rests on the task metric."""

    evaluator = "none (no judge: the task metric alone)"

    def estimate(self, rows: Dataset, template: str, repeat: int) -> str:
        return (f"dry run: {len(rows)} rows; service_llm_provider none: no judge, no calls, cost $0 "
                "(the task metric decides)")

    def judge(self, rows: Dataset, template: str, repeat: int) -> JudgeOutcome:
        return JudgeOutcome([""] * len(rows), [[] for _ in range(len(rows))], self.evaluator, effective_repeat=0)

    def close(self) -> None:
        """Nothing to release."""


class LLMJudge:
    """A service LLM as the judge."""

    def __init__(self, llm: ServiceLLM, batch_size: int = 16) -> None:
        self.llm = llm
        self.batch_size = batch_size

    @property
    def evaluator(self) -> str:
        return self.llm.model

    def jobs(self, prompts: Sequence[str], rows: Dataset, repeat: int, tags: set[str]) -> list[Job]:
        """One job per (row, repeat): native structured output asked for (JUDGE_SCHEMA), and a
        parser bound to the row's own texts, so that a verdict planted in the candidate (or
        echoed back by the judge) is never the one read."""
        jobs = []
        for i, (prompt, *texts) in enumerate(zip(prompts, *(rows[c] for c in INPUT_COLUMNS), strict=True)):
            raw = [str(t or "") for t in texts]  # as given, and as the judge saw them (neutralised)
            quoted = tuple(raw + [neutralize_tags(t, tags) for t in raw])
            parse = functools.partial(parse_judgement, quoted=quoted, data_tags=tags)
            jobs += [Job(prompt, sample_index=r, schema=JUDGE_SCHEMA, parse=parse, label=f"row {i}")
                     for r in range(repeat)]
        return jobs

    def estimate(self, rows: Dataset, template: str, repeat: int) -> str:
        prompts = render_prompts(template, rows, self.batch_size)
        jobs = self.jobs(prompts, rows, repeat, delimiter_tags(template))
        return self.llm.estimate(jobs, expected_output_tokens=REPLY_TOKENS).summary()

    def judge(self, rows: Dataset, template: str, repeat: int) -> JudgeOutcome:
        """Judge each row `repeat` times; results come back in row order."""
        prompts = render_prompts(template, rows, self.batch_size)
        jobs = self.jobs(prompts, rows, repeat, delimiter_tags(template))
        logger.info("judging %d rows x %d repeats with %s", len(prompts), repeat, self.llm.describe())
        # Judging waits on the network; import the report's plotting library meanwhile (after a
        # second, so the import does not hold the GIL while the first requests are being sent).
        warm = threading.Timer(1.0, _import_matplotlib)
        warm.daemon = True
        warm.start()
        results = self.llm.run(jobs, parse=parse_judgement, desc="judging")
        logger.info("judging done")
        scores = [res.value if res.ok and res.value is not None
                  else RepeatScore.failed(f"{res.status}: {res.error or 'no reply'}") for res in results]
        run_usage = self.llm.last_run
        usage = {**ledger_totals(results), "this_run": run_usage.as_dict()}
        return JudgeOutcome(prompts, [scores[i * repeat:(i + 1) * repeat] for i in range(len(prompts))],
                            self.evaluator, usage=usage, effective_repeat=repeat,
                            stopped_for_budget=bool(run_usage.stopped_for_budget))

    def close(self) -> None:
        self.llm.close()


def ledger_totals(results: Sequence[Any]) -> dict[str, Any]:
    """Tokens and cost of every completion behind these judgements, ledger hits included
    (a hit carries the cost it had when it was paid for), so a resumed evaluation reports
    what the whole evaluation cost, not just its last leg."""
    comps = [c for res in results if not res.shared for c in res.completions]  # shared: counted once
    return {
        "input_tokens": sum(c.input_tokens for c in comps),
        "output_tokens": sum(c.output_tokens for c in comps),
        "cost_usd": sum(c.cost_usd for c in comps),
        "completions": len(comps),
        "cached": sum(1 for c in comps if c.cached),
        "shared": sum(1 for res in results if res.shared),
    }
