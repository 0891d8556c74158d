"""A minimal command-line client of `llamaduo.service_llm`, run as a subprocess by the tests
(kill -9 and resume; exit code 2 on bad usage). Not a user-facing tool.

    python -m tests.servers.service_client --provider openai --base-url URL --ledger PATH \
        --n 40 --workers 2 [--rpm 0] [--prefix judge] [--api-key KEY]

Each job i asks the judge prompt for candidate "row i"; prints one JSON line of usage.
"""
from __future__ import annotations

import argparse
import json
import sys

from llamaduo.errors import run_main
from llamaduo.judging.contract import parse_judgement
from llamaduo.service_llm import Job, ServiceLLM, ServiceLLMArgs


def judge_prompt(i: int, prefix: str = "row") -> str:
    return (f"<instruction>\nsay something\n</instruction>\n<reference_answer>\nreference\n"
            f"</reference_answer>\n<candidate_answer>\n{prefix} {i}\n</candidate_answer>")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--provider", default="openai")
    parser.add_argument("--model", default="mock-judge")
    parser.add_argument("--base-url")
    parser.add_argument("--api-key", default="sk-test")
    parser.add_argument("--ledger")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rpm", type=int, default=0)
    parser.add_argument("--prefix", default="row")
    ns = parser.parse_args(argv)
    args = ServiceLLMArgs(service_llm_provider=ns.provider, service_model_name=ns.model,
                          service_llm_api_key=ns.api_key, service_llm_base_url=ns.base_url,
                          ledger_path=ns.ledger, rate_limit_per_minute=ns.rpm)
    llm = ServiceLLM.from_args(args, workers=ns.workers, show_progress=False)
    results = llm.run([Job(judge_prompt(i, ns.prefix)) for i in range(ns.n)], parse=parse_judgement)
    print(json.dumps({"ok": sum(r.ok for r in results), **llm.last_run.as_dict()}), flush=True)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
