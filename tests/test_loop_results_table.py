"""llamaduo.loop.results_table: the loop's table is rebuilt from the round folders' real files
(evaluation summary.json, finetune_summary.json, the loop's train_data.json and .done files)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLE = [sys.executable, "-m", "llamaduo.loop.results_table"]


def _summary(sim: float, prec: float, cov_sim: float, cov_prec: float, qualified: bool) -> dict:
    return {"mean_similarity": sim, "mean_precision": prec, "coverage_similarity": cov_sim,
            "coverage_precision": cov_prec, "coverage_threshold": 50, "qualified": qualified}


def _write(path: Path, data: dict | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def test_table_from_round_folders(tmp_path):
    out = tmp_path / "out"
    _write(out / "round_0" / "eval" / "summary.json", _summary(61.04, 20.5, 0.6, 0.0, False))
    # round 0: peak memory from the loop's own measurement (line 4 of a marker; "-" = none)
    _write(out / "round_0" / "batch_inference.done", "0\n40\nabc\n1234.4\n")
    _write(out / "round_0" / "evaluation.done", "3\n12\nabc\n-\n")
    # round 1: rows from finetune's own report
    _write(out / "round_1" / "train_data.json", {"dataset_mixer": {"data/demo": 1.0}})
    _write(out / "round_1" / "finetune.done", "0\n200\nabc\n")
    # cost from every stage summary (evaluation's `cost_usd`, data_gen's `service_llm.cost_usd`),
    # peak memory as the largest of the stages', pass@1 from evaluation's `execution`
    _write(out / "round_1" / "eval" / "summary.json",
           {**_summary(74.0, 55.25, 0.9, 0.55, False), "cost_usd": 0.25, "peak_rss_mb": 900.4,
            "execution": {"pass_at_1": 0.625}, "service_llm_provider": "reference",
            "task_metric": {"name": "choice", "mean": 42.0, "ci_low": 32.8, "ci_high": 51.8, "n": 100,
                            "threshold": 65, "met": False, "ci_method": "wilson"}})
    _write(out / "round_1" / "synth" / "summary.json",
           {"kept": 3, "rejected": 2, "service_llm": {"cost_usd": 0.5}, "generator": "llamaduo-standin-teacher",
            "dropped_by_reason": {"label_not_in_set": 1, "test_contamination": 1}})
    _write(out / "round_1" / "model" / "finetune_summary.json", {"train_rows": 141, "peak_rss_mb": 2100.6})
    # round 10 sorts after round 1 numerically; rows counted from the mixer (half of 141)
    _write(out / "round_10" / "train_data.json",
           {"dataset_mixer": {str(REPO / "data" / "demo"): 0.5}, "dataset_splits": ["train_sft", "test_sft"]})
    _write(out / "round_10" / "eval" / "summary.json", _summary(88.0, 71.0, 1.0, 0.8, True))

    proc = subprocess.run([*TABLE, str(out), "--write", str(out / "results.md")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0] == ["round", "train rows", "task metric (95% CI)", "mean similarity", "mean precision",
                        "coverage (sim / prec)", "pass@1", "qualified", "cost ($)", "peak mem (MB)", "stage time (s)"]
    assert cells[1] == ["0 (base)", "0", "-", "61.0", "20.5", "60% / 0%", "-", "no", "-", "1234", "52"]
    assert cells[2] == ["1", "141", "choice 42.0 [32.8, 51.8] (bar 65)", "74.0", "55.2", "90% / 55%", "62%", "no",
                        "0.7500", "2101", "200"]
    assert cells[3] == ["10", "70", "-", "88.0", "71.0", "100% / 80%", "-", "yes", "-", "-", "0"]
    assert "at or above 50" in proc.stdout and "Total service-LLM cost: $0.7500" in proc.stdout
    written = (out / "results.md").read_text()
    assert written.startswith("# LlamaDuo loop results") and "| 10 " in written
    # under the table: the judge (round 10 has no provider recorded), the teacher named as a
    # stand-in, and data_gen's rejects by reason
    assert "- teacher (data_gen): llamaduo-standin-teacher (a STAND-IN teacher" in written
    assert "not an LLM" in written
    assert "- round 1 data_gen: kept 3 pairs, rejected 2 (label_not_in_set 1, test_contamination 1)" in written


def test_judge_is_named_and_the_reference_judge_says_it_is_no_llm(tmp_path):
    from llamaduo.loop.results_table import judge_name

    assert "not an LLM judge" in judge_name({"service_llm_provider": "reference"})
    assert judge_name({"service_llm_provider": "none", "judged": False}).startswith("none")
    assert judge_name({"service_llm_provider": "openai", "evaluator": "gpt-4o"}) == "openai (gpt-4o)"


def test_chart_draws_one_point_per_round_with_ci_and_bar(tmp_path):
    """llamaduo.loop.chart writes a PNG from the rounds' summaries; without any summary it
    writes nothing and says so."""
    out = tmp_path / "out"
    for k, (mean, lo, hi, q) in enumerate([(1.0, 0.2, 5.4, False), (42.0, 32.8, 51.8, False), (88.0, 80.2, 93.0, True)]):
        _write(out / f"round_{k}" / "eval" / "summary.json",
               {**_summary(60.0 + k, 20.0 + 10 * k, 0.5, 0.5, q), "service_llm_provider": "reference",
                "avg_similarity_threshold": 0, "avg_precision_threshold": 0,
                "task_metric": {"name": "choice", "mean": mean, "ci_low": lo, "ci_high": hi, "n": 100,
                                "threshold": 65, "met": q}})
    from llamaduo.loop import chart

    pts = chart.points(out)
    assert [p["round"] for p in pts] == [0, 1, 2] and pts[2]["task_metric"]["ci_low"] == 80.2
    assert chart._bound(0.0, 3.0) == 0.0 and chart._bound(None, 3.0) == 3.0  # 0 of n: the bar reaches 0
    proc = subprocess.run([sys.executable, "-m", "llamaduo.loop.chart", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "llamaduo.loop.chart", str(empty)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and not (empty / "results.png").exists() and "no finished evaluation" in proc.stderr


def test_unfinished_round_shows_dashes_and_missing_folder_is_usage_error(tmp_path):
    out = tmp_path / "out"
    (out / "round_0").mkdir(parents=True)
    proc = subprocess.run([*TABLE, str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    row = [line for line in proc.stdout.splitlines() if line.startswith("| 0")][0]
    assert [c.strip() for c in row.strip("|").split("|")][2:10] == ["-", "-", "-", "- / -", "-", "-", "-", "-"]
    bad = subprocess.run([*TABLE, str(tmp_path / "nope")], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "is not a folder" in bad.stderr


def test_measured_records_the_stage_peak_and_passes_its_exit_code_through(tmp_path):
    """llamaduo.loop.measured, the loop's launcher: the child's own peak RSS (a 300 MB buffer
    held while running) lands in the file, and the child's exit code is returned."""
    rss = tmp_path / "stage.rss"
    child = "b = bytearray(300 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); raise SystemExit(3)"
    proc = subprocess.run([sys.executable, "-m", "llamaduo.loop.measured", str(rss), "--",
                           sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert 300 <= float(rss.read_text()) < 1000
