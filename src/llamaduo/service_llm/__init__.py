"""The one way every stage calls a service LLM (the evaluation judge, synthetic data generation).

`ServiceLLM.from_args(args, workers=...)` validates offline (UsageError, exit 2), then
`run(jobs, parse)` returns one `JobResult` per job in input order, every reply stored in a
SQLite ledger first so a rerun pays for nothing twice. Providers live in `providers/`, one
module each. Usage, parts and how to add a provider: docs/service_llm.md.
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
