"""Judging: the judge contract, the judges, score aggregation, and the evaluation report.

- `contract`: the judge contract, declared once: prompt placeholders, reply schema and parser,
  score scale, `RepeatScore`/`JudgeOutcome`, the output columns with their features.
- `judges`: the `Judge` protocol and `make_judge` (by name): `LLMJudge` (a service LLM) or
  `reference.ReferenceJudge` (100*cos MiniLM embeddings / 100*ROUGE-L precision, no network).
- `aggregate`: `RowScore`, `aggregate_row`, `summarize` (means, 95% CI, coverage, agreement,
  failures, `qualified`), `too_many_failures`.
- `report`: histogram PNG, `report.md`, the printed one-screen summary.
- `task_metrics` + `task_report`: metrics that check each answer against the reference
  (exact_match, choice, json_match, token_f1, rouge_l, unit_tests) into `task_score`, the
  summary's `task_metric` block with its 95% CI, and its report section.
- `code_eval` + `passk`: execution-based evaluation (answers run against the rows' `test`
  column in llamaduo.sandbox): pass@k, the pass rate with its CI, agreement with the judge.

No stage is imported here; `llamaduo.pipeline.evaluation` wires these to data.
"""
from llamaduo.judging.aggregate import (
    RowScore,
    Thresholds,
    aggregate_row,
    coverage,
    mean_ci95,
    summarize,
    too_many_failures,
)
from llamaduo.judging.contract import RepeatScore
from llamaduo.judging.reference import REFERENCE_EVALUATOR, ReferenceJudge, embedding_model_dir
from llamaduo.judging.report import (
    HISTOGRAM_NAME,
    one_screen_summary,
    render_report,
    worst_rows,
    write_histogram,
)
from llamaduo.judging.task_report import task_metric_lines, task_report

__all__ = [
    "RepeatScore", "RowScore", "Thresholds", "aggregate_row", "coverage", "mean_ci95", "summarize",
    "too_many_failures", "REFERENCE_EVALUATOR", "ReferenceJudge", "embedding_model_dir",
    "HISTOGRAM_NAME", "one_screen_summary", "render_report", "worst_rows", "write_histogram",
    "task_metric_lines", "task_report",
]
