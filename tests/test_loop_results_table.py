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
            "execution": {"pass_at_1": 0.625}})
    _write(out / "round_1" / "synth" / "summary.json", {"kept": 3, "service_llm": {"cost_usd": 0.5}})
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
    assert cells[0] == ["round", "train rows", "mean similarity", "mean precision", "coverage (sim / prec)",
                        "pass@1", "qualified", "cost ($)", "peak mem (MB)", "stage time (s)"]
    assert cells[1] == ["0 (base)", "0", "61.0", "20.5", "60% / 0%", "-", "no", "-", "1234", "52"]
    assert cells[2] == ["1", "141", "74.0", "55.2", "90% / 55%", "62%", "no", "0.7500", "2101", "200"]
    assert cells[3] == ["10", "70", "88.0", "71.0", "100% / 80%", "-", "yes", "-", "-", "0"]
    assert "at or above 50" in proc.stdout and "Total service-LLM cost: $0.7500" in proc.stdout
    written = (out / "results.md").read_text()
    assert written.startswith("# LlamaDuo loop results") and "| 10 " in written


def test_unfinished_round_shows_dashes_and_missing_folder_is_usage_error(tmp_path):
    out = tmp_path / "out"
    (out / "round_0").mkdir(parents=True)
    proc = subprocess.run([*TABLE, str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    row = [line for line in proc.stdout.splitlines() if line.startswith("| 0")][0]
    assert [c.strip() for c in row.strip("|").split("|")][2:9] == ["-", "-", "- / -", "-", "-", "-", "-"]
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
