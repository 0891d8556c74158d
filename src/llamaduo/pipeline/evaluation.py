"""Step 3 of the loop: judge the small model's responses against the reference answers.

Flow: check every input (exit 2, before any model load or paid call) -> the judge named by
`service_llm_provider` (llamaduo.judging.judges) judges each row -> aggregate -> write the
dataset (columns: llamaduo.judging.contract), `summary.json`, `report.md` and the histogram
into the local output folder -> push when asked -> print a one-screen summary -> exit 0
qualified / 3 not qualified / 1 failed. See docs/evaluation.md.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from datasets import Dataset, Features

from llamaduo.defaults import default_file
from llamaduo.config import config_to_dict, parse_config
from llamaduo.legacy_keys import SERVICE_LLM_LEGACY
from llamaduo.data import load_split
from llamaduo.value_checks import check_planned
from llamaduo.errors import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_NOT_QUALIFIED,
    EXIT_OK,
    RunFailed,
    UsageError,
)
from llamaduo.hub import check_push_possible, dataset_output_plan, local_output_dir, save_output, scrub_secrets
from llamaduo.judging import code_eval, task_metrics
from llamaduo.judging import (
    HISTOGRAM_NAME,
    RowScore,
    Thresholds,
    aggregate_row,
    one_screen_summary,
    render_report,
    summarize,
    task_report,
    too_many_failures,
    write_histogram,
)
from llamaduo.judging.report import histogram_title
from llamaduo.judging.contract import INPUT_COLUMNS, JudgeOutcome, load_eval_template, output_columns, output_features
from llamaduo.judging.judges import NONE, REFERENCE, Judge, check_judge_name, judge_names, make_judge
from llamaduo.judging.truncation import FINISH_COLUMN, truncated_summary
from llamaduo.logging_setup import setup_logging
from llamaduo.outputs import OutputPlan, guarded_output
from llamaduo.peak_rss import peak_rss_mb
from llamaduo.service_llm import ServiceLLMArgs
from llamaduo.validation import check_text_columns

logger = logging.getLogger("llamaduo.evaluation")

LEDGER_NAME = "service_llm_ledger.sqlite"
SUMMARY_NAME = "summary.json"
REPORT_NAME = "report.md"


@dataclass
class EvaluationArgs(ServiceLLMArgs):
    """evaluation.py's keys: the shared service-LLM keys plus the original's evaluation keys.

    `service_llm_provider: reference` selects the offline reference judge (no network)."""

    service_llm_provider: str = field(
        default="gemini",
        metadata={"help": "The judge: " + ", ".join(judge_names()) + f". `{REFERENCE}` is the offline "
                          "reference judge: 100*cos(all-MiniLM-L6-v2) / 100*ROUGE-L precision; "
                          f"no network, no key, free. `{NONE}`: no judge, the task_metric alone decides."},
    )
    prompt_tmpl_path: str = field(
        default=default_file("prompts.toml"),
        metadata={"help": "TOML file whose [eval] prompt is the judge prompt "
                          "(placeholders: $instruction, $human_response, $lm_response)."},
    )
    lm_response_ds_id: str = field(
        default="",
        metadata={"help": "The batch-inference output to judge: a Hub dataset id, a local "
                          "save_to_disk folder, a folder of <split>.jsonl files, or a file."},
    )
    lm_response_ds_split: str = field(
        default="batch_infer", metadata={"help": "Split of lm_response_ds_id to judge."}
    )
    eval_data_preprocess_bs: int = field(
        default=16, metadata={"help": "Batch size for preparing judge prompts and for the "
                                      "reference judge's embedding batches."}
    )
    eval_repeat: int = field(
        default=3, metadata={"min": 1, "max": 1000, "help": "How many times each row is judged; scores are averaged. "
                                     "The deterministic reference judge scores each row once."}
    )
    eval_workers: int = field(
        default=8, metadata={"min": 1, "max": 1024, "help": "Concurrent judge requests (the RPM limit still applies)."}
    )
    avg_similarity_threshold: float = field(
        default=90.0, metadata={"help": "Qualified needs mean similarity >= this (0-100)."}
    )
    avg_precision_threshold: float = field(
        default=90.0, metadata={"help": "Qualified needs mean precision >= this (0-100)."}
    )
    coverage_threshold: float = field(
        default=50.0, metadata={"help": "Coverage = share of rows scoring >= this (0-100), per score."}
    )
    allow_low_threshold: bool = field(
        default=False, metadata={"help": "Accept a score threshold in (0, 1]. Thresholds are on the "
                                         "0-100 scale, so 0.8 is almost surely meant as 80 and is "
                                         "refused (exit 2) unless this is set."}
    )
    max_failure_ratio: float = field(
        default=0.1, metadata={"help": "The run fails (exit 1) if more than this share (0-1) of "
                                       "the judgements stay invalid or fail."}
    )
    push_eval_to_hf_hub: bool = field(
        default=False, metadata={"help": "Push the evaluation dataset to eval_ds_id on the Hub."}
    )
    eval_ds_id: str = field(
        default="outputs/evaluation",
        metadata={"help": "Output: a local folder when not pushing; the Hub dataset id when "
                          "pushing (the local copy then goes to <output_root>/<eval_ds_id>)."},
    )
    eval_ds_split: str = field(default="eval", metadata={"help": "Split name of the output."})
    eval_ds_append: bool = field(
        default=False, metadata={"help": "Append to the output split instead of replacing it."}
    )
    output_root: str = field(
        default="outputs", metadata={"help": "Root of local copies of pushed outputs."}
    )
    overwrite_input: bool = field(
        default=False, metadata={"help": "Allow eval_ds_id to be the input lm_response_ds_id (it is "
                                         "replaced); otherwise that is refused with exit 2."}
    )
    allow_code_execution: bool = field(
        default=False, metadata={"help": "Consent to run the model-written code against the rows' "
                                         "`test` column (sandboxed, limited; see docs/evaluation.md). "
                                         "Without it, a `test` column is refused with exit 2."}
    )
    pass_rate_threshold: Optional[float] = field(
        default=None, metadata={"help": "When set, qualified also needs the unit-test pass rate "
                                        "(pass@1, 0-100) >= this."}
    )
    execution_timeout_s: float = field(
        default=10.0, metadata={"min": 0.001, "max": 86400, "help": "Wall-clock limit per test run (the CPU limit is this + 1 s)."}
    )
    execution_memory_mb: int = field(
        default=2048, metadata={"max": 1_048_576, "help": "Address-space limit per test run, in MB."}
    )
    execution_workers: int = field(
        default=0, metadata={"help": "Test runs in parallel (0 = min(4, CPUs))."}
    )
    execution_isolation: str = field(
        default="auto", metadata={"help": "Kernel sandbox for the tests: auto or bwrap (bubblewrap: own "
                                          "user/PID/network/mount namespaces; exit 2 when unavailable), or "
                                          "none (no isolation, unsafe, warned on every run).",
                                  "choices": ["auto", "bwrap", "none"]}
    )
    task_metric: Optional[str] = field(
        default=None, metadata={"help": "A metric that checks each answer against the reference, into the "
                                        "`task_score` column (0-100): " + "; ".join(
                                            f"{k} ({v})" for k, v in task_metrics.METRICS.items())
                                        + ". Unset: none. See docs/evaluation.md, 'Choosing a task metric'."}
    )
    task_metric_threshold: Optional[float] = field(
        default=None, metadata={"help": "When set, qualified also needs the task metric's mean (0-100) >= this."}
    )
    labels: list[str] = field(
        default_factory=list, metadata={"help": "The closed label set of task_metric choice. Empty: the "
                                                "distinct reference answers."}
    )
    answer_pattern: Optional[str] = field(
        default=None, metadata={"help": "A regex whose first group reads the answer out of a longer reply "
                                        "(exact_match, choice, token_f1); a reply it does not match scores 0 "
                                        "(choice: is searched whole). Applied to a reference only where it matches."}
    )


# --------------------------------------------------------------------------- validation


def validate_args(args: EvaluationArgs) -> None:
    """Value checks the parser cannot do; each raises UsageError (exit 2) before any work."""
    check_judge_name(args.service_llm_provider)
    if not args.lm_response_ds_id:
        raise UsageError("lm_response_ds_id is required (the batch-inference output to judge)")
    if not args.eval_ds_id:
        raise UsageError("eval_ds_id is required (where the evaluation is written)")
    if args.eval_repeat < 1:
        raise UsageError(f"eval_repeat must be >= 1, got {args.eval_repeat}")
    if args.eval_workers < 1:
        raise UsageError(f"eval_workers must be >= 1, got {args.eval_workers}")
    if args.eval_data_preprocess_bs < 1:
        raise UsageError(f"eval_data_preprocess_bs must be >= 1, got {args.eval_data_preprocess_bs}")
    for name in ("avg_similarity_threshold", "avg_precision_threshold", "coverage_threshold"):
        value = getattr(args, name)
        if not 0 <= value <= 100:
            raise UsageError(f"{name} must be within 0-100, got {value:g}")
        if 0 < value <= 1 and not args.allow_low_threshold:
            raise UsageError(f"{name}={value:g} is on the 0-100 scale: did you mean {value * 100:g}? "
                             "(set allow_low_threshold: true to keep it)")
    if not 0 <= args.max_failure_ratio <= 1:
        raise UsageError(f"max_failure_ratio must be within 0-1, got {args.max_failure_ratio:g}")
    task_metrics.check_settings(metric_settings(args), allow_low_threshold=args.allow_low_threshold)
    if args.service_llm_provider == NONE:
        if not args.task_metric:
            raise UsageError("service_llm_provider none evaluates on the task metric alone: set task_metric "
                             "(see docs/evaluation.md, 'Choosing a task metric')")
        if args.task_metric_threshold is None and args.pass_rate_threshold is None:
            raise UsageError("service_llm_provider none has no judge to qualify by: set task_metric_threshold, "
                             "the bar the task metric must reach")


def metric_settings(args: EvaluationArgs) -> task_metrics.MetricSettings:
    return task_metrics.MetricSettings(args.task_metric or None, args.task_metric_threshold,
                                       tuple(args.labels or ()), args.answer_pattern or None)


# --------------------------------------------------------------------------- output


def add_columns(ds: Dataset, columns: dict[str, list], types: dict[str, Any]) -> Dataset:
    """Append the columns, replacing same-named ones (re-judging an eval output).

    The types are fixed rather than inferred, so a column that happens to be all null in one
    run (no failures, a single repeat) has the same schema as in the next: appending works."""
    existing = [c for c in columns if c in ds.column_names]
    if existing:
        logger.warning("input already has column(s) %s; they are replaced", ", ".join(existing))
        ds = ds.remove_columns(existing)
    features = Features({**ds.features, **{name: types[name] for name in columns}})
    return Dataset.from_dict({**ds.to_dict(), **columns}, features=features)


def write_reports(out_dir: Path, summary: dict, ds: Dataset, rows: Sequence[RowScore],
                  thresholds: Thresholds) -> None:
    """summary.json, the histogram PNG and report.md, side by side in the output folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SUMMARY_NAME).write_text(scrub_secrets(json.dumps(summary, indent=2)) + "\n")
    scored = [r for r in rows if r.scored]
    if summary.get("judged", True):
        write_histogram([r.similarity for r in scored], [r.precision for r in scored],
                        out_dir / HISTOGRAM_NAME, thresholds=(thresholds.similarity, thresholds.precision),
                        title=histogram_title(summary))
    report = render_report(summary, ds.to_list())
    report += "\n".join(["", *task_report(summary, ds.to_list()), *code_eval.execution_report(summary, ds.to_list())])
    (out_dir / REPORT_NAME).write_text(scrub_secrets(report))


def _tokens(usage: dict) -> dict[str, int]:
    i, o = int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
    return {"input": i, "output": o, "total": i + o}


def build_summary(args: EvaluationArgs, rows: Sequence[RowScore], outcome: JudgeOutcome,
                  thresholds: Thresholds, ds: Dataset, date: str, out_dir: Path) -> dict:
    """summary.json: the score statistics plus run facts under stable keys."""
    summary = summarize(rows, thresholds, judged=args.service_llm_provider != NONE)
    usage = outcome.usage
    model_ids = sorted({str(m) for m in ds["model_id"]}) if "model_id" in ds.column_names else []
    summary.update({
        "evaluator": outcome.evaluator,
        "peak_rss_mb": peak_rss_mb(),
        "service_llm_provider": args.service_llm_provider,
        "eval_repeat": outcome.effective_repeat,
        "cost_usd": round(float(usage.get("cost_usd", 0.0)), 6),
        "tokens": _tokens(usage),
        "calls": int(usage.get("completions", 0)),
        "cached_calls": int(usage.get("cached", 0)),
        "shared_calls": int(usage.get("shared", 0)),  # identical judgements answered by one call
        "this_run": usage.get("this_run", {}),
        "stopped_for_budget": outcome.stopped_for_budget,
        "lm_response_ds_id": args.lm_response_ds_id,
        "lm_response_ds_split": args.lm_response_ds_split,
        "model_ids": model_ids,
        "truncated": truncated_summary(ds[FINISH_COLUMN] if FINISH_COLUMN in ds.column_names else None),
        "date": date,
        "output_dir": str(out_dir),
    })
    return summary


def versions_block(args: EvaluationArgs, judge: Judge, template: str, outcome: JudgeOutcome) -> dict:
    """summary.json `versions`: what a score depends on besides the data (package versions,
    the judge prompt's hash, the judge's settings), so two runs' numbers can be compared."""
    import hashlib

    from llamaduo.version import run_versions

    spec = getattr(getattr(judge, "llm", None), "spec", None)
    return {**run_versions(),
            "judge_prompt_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(),
            "judge": {"provider": args.service_llm_provider, "model": outcome.evaluator,
                      "eval_repeat": outcome.effective_repeat,
                      "gen_config": dict(spec.gen_config) if spec is not None else None}}


# --------------------------------------------------------------------------- run

def dry_run(judge: Judge, template: str, ds: Dataset, args: EvaluationArgs) -> int:
    """Print how many judge calls the run would make and what they would cost; call nothing."""
    try:
        print(judge.estimate(ds, template, args.eval_repeat))
    finally:
        judge.close()
    return EXIT_OK


def execution_settings(args: EvaluationArgs) -> code_eval.ExecSettings:
    return code_eval.ExecSettings(args.allow_code_execution, args.pass_rate_threshold,
                                  args.execution_timeout_s, args.execution_memory_mb, args.execution_workers,
                                  args.execution_isolation)


def judge_scores(rows: Sequence[RowScore], thresholds: Thresholds) -> tuple[dict, dict]:
    """The judge's per-row scores and their bars, for agreement with tests and metrics."""
    return ({"similarity": [r.similarity for r in rows], "precision": [r.precision for r in rows]},
            {"similarity": thresholds.similarity, "precision": thresholds.precision})


def add_criterion(summary: dict, crit: Optional[dict]) -> None:
    """Make `crit` one of the `criteria` of `qualified` (the verdict line then shows the
    measured value beside its bar)."""
    if crit is not None:
        summary["criteria"].append(crit)
        summary["qualified"] = summary["qualified"] and crit["passed"]


def run_execution(ds: Dataset, rows: Sequence[RowScore], thresholds: Thresholds,
                  settings: code_eval.ExecSettings, summary: dict) -> dict[str, list]:
    """Run the answers against their tests: return the per-row columns, put the `execution`
    object into the summary, and make a set pass_rate_threshold one of the `criteria`."""
    columns, summary["execution"], crit = code_eval.evaluate_code(ds, settings, *judge_scores(rows, thresholds))
    add_criterion(summary, crit)
    return columns


def run_task_metric(prep: task_metrics.Prepared, ds: Dataset, rows: Sequence[RowScore], thresholds: Thresholds,
                    exec_columns: Optional[dict[str, list]], summary: dict) -> list[Optional[float]]:
    """Score every row with the task metric: return the `task_score` values, put the
    `task_metric` object into the summary and its threshold into the `criteria`."""
    settings = prep.settings
    judged = summary.get("judged", True)
    scores, bars = judge_scores(rows, thresholds)
    if settings.name == task_metrics.UNIT_TESTS:
        assert exec_columns is not None  # prepare() refused unit_tests without a test column
        result, mean, n = task_metrics.unit_test_result(exec_columns["passed"], code_eval._prompt_keys(ds))
        agreement = (summary.get("execution") or {}).get("agreement") if judged else None
        block, crit = task_metrics.summary_block(settings, result, mean=mean, n=n, agreement=agreement)
    else:
        result = task_metrics.score_rows(prep, ds[task_metrics.CANDIDATE_COLUMN], ds[task_metrics.REFERENCE_COLUMN])
        agreement = task_metrics.agreement(settings, result.scores, scores, bars) if judged else None
        block, crit = task_metrics.summary_block(settings, result, agreement=agreement)
    summary["task_metric"] = block
    add_criterion(summary, crit)
    return result.scores


def output_plan(args: EvaluationArgs) -> OutputPlan:
    """The folder this run writes (locked for the run) and the input it must not replace."""
    return dataset_output_plan(None if args.dry_run else args.eval_ds_id, "eval_ds_id",
                               push=args.push_eval_to_hf_hub, output_root=args.output_root,
                               inputs={"lm_response_ds_id": args.lm_response_ds_id},
                               overwrite_input=args.overwrite_input)


@guarded_output(output_plan, precheck=validate_args)
def run(args: EvaluationArgs) -> int:
    """The whole stage; returns the exit code (0 qualified, 3 not qualified)."""
    validate_args(args)
    template = load_eval_template(args.prompt_tmpl_path)
    check_push_possible(args.push_eval_to_hf_hub, f"the evaluation to '{args.eval_ds_id}'")
    out_dir = local_output_dir(args.eval_ds_id, args.push_eval_to_hf_hub, args.output_root)
    judge = make_judge(args, workers=args.eval_workers, ledger_path=out_dir / LEDGER_NAME,
                       batch_size=args.eval_data_preprocess_bs)
    ds = load_split(args.lm_response_ds_id, args.lm_response_ds_split,
                    required_columns=INPUT_COLUMNS, what="response dataset")
    check_text_columns(ds, INPUT_COLUMNS, f"response dataset '{args.lm_response_ds_id}'")
    check_planned(f"response dataset '{args.lm_response_ds_id}'", len(ds), args.eval_repeat, "eval_repeat")
    exec_settings = execution_settings(args)
    source = f"the response dataset '{args.lm_response_ds_id}'"
    code_eval.check_execution_args(ds.column_names, exec_settings, source)
    metric = metric_settings(args)
    prep = (task_metrics.prepare(metric, ds[task_metrics.REFERENCE_COLUMN], ds.column_names, source,
                                 has_tests=code_eval.has_tests(ds.column_names)) if metric.name else None)
    thresholds = Thresholds(args.avg_similarity_threshold, args.avg_precision_threshold,
                            args.coverage_threshold, args.max_failure_ratio)
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    if args.dry_run:
        return dry_run(judge, template, ds, args)
    try:
        outcome = judge.judge(ds, template, args.eval_repeat)
    finally:
        judge.close()

    rows = [aggregate_row(js) for js in outcome.repeats]
    summary = build_summary(args, rows, outcome, thresholds, ds, date, out_dir)
    summary["versions"] = versions_block(args, judge, template, outcome)
    exec_columns = run_execution(ds, rows, thresholds, exec_settings, summary) if code_eval.has_tests(ds.column_names) else None
    task_scores = run_task_metric(prep, ds, rows, thresholds, exec_columns, summary) if prep else None
    summary["qualified"] = summary["qualified"] and bool(summary["criteria"])  # no bar at all: never qualified
    out_ds = add_columns(ds, output_columns(rows, outcome.prompts, outcome.evaluator, date, task_scores),
                         output_features())
    if exec_columns is not None:
        out_ds = add_columns(out_ds, exec_columns, code_eval.EXEC_FEATURES)
    failed = too_many_failures(summary) or outcome.stopped_for_budget
    summary["exit_code"] = EXIT_FAILED if failed else (EXIT_OK if summary["qualified"] else EXIT_NOT_QUALIFIED)
    # A failed evaluation is kept locally for inspection but never pushed. The reports are
    # written into the same atomic replacement as the dataset: never one without the other.
    save_output({args.eval_ds_split: out_ds}, args.eval_ds_id,
                push=args.push_eval_to_hf_hub, local_only=failed, append=args.eval_ds_append,
                stage="evaluation", config=config_to_dict(args),
                inputs={"lm_response_ds_id": args.lm_response_ds_id,
                        "lm_response_ds_split": args.lm_response_ds_split,
                        "model_ids": summary["model_ids"]},
                output_root=args.output_root,
                extra_files=lambda folder: write_reports(folder, summary, out_ds, rows, thresholds))
    print(one_screen_summary(summary, out_dir))
    if outcome.stopped_for_budget:
        raise RunFailed(f"max_cost_usd was reached before every row was judged; partial "
                        f"results are in {out_dir} and a rerun resumes from the ledger")
    if failed:
        raise RunFailed(
            f"{summary['failures']} of {summary['judgements']} judgements failed "
            f"(ratio {summary['failure_ratio']:.3f} > max_failure_ratio {args.max_failure_ratio:g}); "
            f"see the failure_reason column and {out_dir / REPORT_NAME}")
    return summary["exit_code"]


DESCRIPTION = (
    "Judge a batch-inference output with a service LLM (or the offline reference judge: "
    "--service_llm_provider reference), write the scored dataset, summary.json, report.md and "
    "a histogram, and exit 0 when qualified. See docs/evaluation.md."
)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: parse (`--from-config` YAML + flags), then run."""
    setup_logging()  # also quiets the providers' SDK loggers
    return run(*parse_args(argv))


def parse_args(argv: Sequence[str] | None = None) -> tuple[EvaluationArgs]:
    """(EvaluationArgs,) from the CLI and an optional `--from-config` YAML (also the loop's check)."""
    return parse_config(EvaluationArgs, argv=argv, description=DESCRIPTION,
                        epilog=EXIT_CODES_HELP, legacy_keys=SERVICE_LLM_LEGACY)
