"""The one way every stage calls a service LLM (evaluation judge, synthetic data generation).

Usage from a stage::

    from dataclasses import dataclass, field
    from llamaduo.service_llm import ServiceLLMArgs, ServiceLLM, Job
    from llamaduo.judging.contract import parse_judgement   # the judge's parser

    @dataclass
    class EvalArgs(ServiceLLMArgs):          # inherits every service-LLM key (flags + YAML)
        eval_workers: int = field(default=8, metadata={"help": "..."})

    llm = ServiceLLM.from_args(args, workers=args.eval_workers,
                               default_ledger_path=out_dir / "service_llm_ledger.sqlite")
    # ^ fail-fast: raises llamaduo.errors.UsageError (exit 2) for an unknown provider, missing
    #   key/credentials, a missing gen-config file, a bad base URL, bad values... No network,
    #   no model load.
    jobs = [Job(prompt, sample_index=r) for prompt in prompts for r in range(repeats)]
    if args.dry_run:
        print(llm.estimate(jobs, expected_output_tokens=120).summary()); return 0
    results = llm.run(jobs, parse=parse_judgement, desc="judging")   # input order
    # (optional on_result=lambda i, res: ... is called as each job finishes)
    for res in results:
        if res.ok: use(res.value)             # what the parser returned (the judge: a RepeatScore)
        else:      record_failure(res.error)   # a reason; never a crash, never a 0
    summary["service_llm"] = llm.last_run.as_dict()   # calls, cached, tokens, cost...
    if llm.last_run.stopped_for_budget: ...            # --max-cost-usd was reached
    evaluator_name = llm.model                          # e.g. "gemini-2.5-flash"

Ledger: every reply is stored (SQLite, WAL) before it is used, keyed by provider, model, gen
config, conversation and sample index, so a rerun or a restart after kill -9 pays for nothing
twice. Pass `default_ledger_path` inside the stage's output folder. Tests: point
`service_llm_base_url` at `tests/servers/protocol_server.py` (see docs/service_llm.md).

Parts (one concern each):
    args.py        ServiceLLMArgs, the shared config keys (a dataclass mixin)
    records.py     Completion, Job, JobResult, Usage, Estimate, InvalidReply, ResponseSchema
    providers.py   one thin adapter per SDK (the only module importing an SDK)
    scheduler.py   concurrency, smooth RPM/TPM pacing, retries with backoff (tenacity)
    ledger.py      SQLite (WAL) response ledger: cache, resume after kill -9, tokens & cost
    structured.py  JSON extraction, the re-ask message
    schema_wire.py a Job's ResponseSchema in each provider's wire form (native structured output)
    reachability.py stop a run whose provider cannot be reached at all (exit 1)
    pricing.py     src/llamaduo/defaults/pricing.yaml -> USD per call; token estimates for --dry-run
    client.py      ServiceLLM: ties the parts together behind `run` / `estimate`

The local protocol server that tests use is `tests/servers/protocol_server.py`.
"""
from llamaduo.service_llm.args import PROVIDERS, ServiceLLMArgs
from llamaduo.service_llm.client import ServiceLLM
from llamaduo.service_llm.records import (
    ERROR,
    INVALID,
    OK,
    SKIPPED_BUDGET,
    Completion,
    Estimate,
    InvalidReply,
    Job,
    JobResult,
    ResponseSchema,
    Usage,
)
from llamaduo.service_llm.structured import extract_json

__all__ = [
    "PROVIDERS",
    "ServiceLLMArgs",
    "ServiceLLM",
    "Completion",
    "Estimate",
    "InvalidReply",
    "Job",
    "JobResult",
    "ResponseSchema",
    "Usage",
    "OK",
    "INVALID",
    "ERROR",
    "SKIPPED_BUDGET",
    "extract_json",
]
