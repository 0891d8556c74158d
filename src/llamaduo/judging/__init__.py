"""Judging: the offline reference judge, score aggregation, and the evaluation report.

- `reference`: `ReferenceJudge` (100*cos MiniLM embeddings / 100*ROUGE-L precision), no network.
- `aggregate`: `RepeatScore`, `aggregate_row`, `summarize` (means, 95% CI, coverage, agreement,
  failures, `qualified`), `too_many_failures`.
- `report`: histogram PNG, `report.md`, the printed one-screen summary.
- `code_eval` + `passk`: execution-based evaluation (answers run against the rows' `test`
  column in llamaduo.sandbox): pass@k, the pass rate with its CI, agreement with the judge.

No stage is imported here; `llamaduo.pipeline.evaluation` wires these to data and the service LLM.
"""
from llamaduo.judging.aggregate import (
    RepeatScore,
    RowScore,
    Thresholds,
    aggregate_row,
    coverage,
    mean_ci95,
    summarize,
    too_many_failures,
)
from llamaduo.judging.reference import REFERENCE_EVALUATOR, ReferenceJudge, embedding_model_dir
from llamaduo.judging.report import (
    HISTOGRAM_NAME,
    one_screen_summary,
    render_report,
    worst_rows,
    write_histogram,
)

__all__ = [
    "RepeatScore", "RowScore", "Thresholds", "aggregate_row", "coverage", "mean_ci95", "summarize",
    "too_many_failures", "REFERENCE_EVALUATOR", "ReferenceJudge", "embedding_model_dir",
    "HISTOGRAM_NAME", "one_screen_summary", "render_report", "worst_rows", "write_histogram",
]
