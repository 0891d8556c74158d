"""Execution-based evaluation: pass@k, the pass-rate CI, judge agreement, and evaluation.py
end to end on HumanEval-shaped rows (tests with check(candidate)) with the reference judge."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
from datasets import load_from_disk

from llamaduo.errors import EXIT_NOT_QUALIFIED, EXIT_OK, UsageError
from llamaduo.judging.passk import auc, judge_agreement, pass_at_k, pass_rate_stats
from llamaduo.pipeline.evaluation import main

HUMANEVAL = Path(__file__).parent / "data" / "humaneval_shaped.jsonl"


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("n, c, k", [(n, c, k) for n in (1, 2, 5, 10, 40) for c in range(0, n + 1, max(1, n // 5))
                                     for k in (1, 2, 5, 10) if k <= n])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k):
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_is_stable_where_binomials_overflow_floats():
    # C(2000, 1000) ~ 1e600 would overflow a float; the product form does not form it.
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)
    assert pass_at_k(2000, 0, 1000) == 0.0


def test_auc_matches_pairwise_counting_with_ties():
    scores = [90, 90, 80, 70, 70, 70, 50, 95]
    labels = [True, False, True, False, True, False, False, True]
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    pairs = list(itertools.product(pos, neg))
    brute = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in pairs) / len(pairs)
    assert auc(scores, labels) == pytest.approx(brute)
    assert auc([1, 2], [True, True]) is None  # one class: undefined, not 0.5


def test_pass_rate_ci_is_the_wilson_interval_over_prompts():
    stats = pass_rate_stats({"a": [True], "b": [True], "c": [False]})
    assert stats["pass_at_1"] == pytest.approx(2 / 3, abs=1e-4)
    lo, hi = stats["pass_rate_ci95"]
    # Wilson, 2 of 3: [20.77, 93.85]; the old Student-t interval was [-76.8, 210.1] before clipping
    assert (lo, hi) == pytest.approx((20.77, 93.85), abs=0.01)


def test_agreement_counts_rows_the_judge_passed_that_fail():
    passed = [True, False, False, None, True]
    ag = judge_agreement(passed, {"similarity": [90, 95, 40, 99, 80], "precision": [80, 85, 30, 99, None]},
                         {"similarity": 80, "precision": 50})
    assert ag["rows"] == 3  # the untested row and the unscored row are left out
    assert ag["judge_pass_test_fail"] == {"count": 1, "rows": [1]}
    assert ag["similarity"]["mean_passing"] == 90 and ag["similarity"]["mean_failing"] == 67.5
    assert ag["similarity"]["auc"] == 0.5  # 90 beats 40, loses to 95


# --------------------------------------------------------------------------- end to end


def humaneval_rows() -> list[dict]:
    return [json.loads(line) for line in HUMANEVAL.read_text().splitlines()]


def fence(code: str) -> str:
    return f"```python\n{code}```"


def write_batch(path: Path, candidates_per_task: list[list[str]], **cols) -> Path:
    """A batch-inference output: one row per (task, sample), with the carried test columns."""
    with path.open("w") as fh:
        for task, cands in zip(humaneval_rows(), candidates_per_task):
            for k, cand in enumerate(cands):
                fh.write(json.dumps({
                    "instructions": task["prompt"],
                    "target_responses": fence(task["prompt"] + task["canonical_solution"]),
                    "candidate_responses": cand, "model_id": "m", "model_sha": "s", "prompt_id": task["task_id"],
                    "repeat_index": k, "test": task["test"], "entry_point": task["entry_point"], **cols}) + "\n")
    return path


def argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--service_llm_provider", "reference", "--lm_response_ds_id", str(data), "--eval_ds_id", str(out),
            "--avg_similarity_threshold", "50", "--avg_precision_threshold", "50", *extra]


def copy_stub(task: dict) -> str:
    return fence(task["prompt"] + "    pass\n")


def correct(task: dict) -> str:
    return "Here is the function:\n" + fence(task["prompt"] + task["canonical_solution"]) + "\nIt works."


def test_humaneval_rows_give_pass_at_k_and_judge_agreement(tmp_path, capsys):
    tasks = humaneval_rows()
    # two samples per task: task 0 both right, task 1 one right, tasks 2-3 only stub copies
    cands = [[correct(tasks[0])] * 2, [correct(tasks[1]), copy_stub(tasks[1])],
             [copy_stub(tasks[2])] * 2, [copy_stub(tasks[3])] * 2]
    data = write_batch(tmp_path / "batch.jsonl", cands)
    rc = main(argv(data, tmp_path / "eval", "--allow_code_execution", "--pass_rate_threshold", "50"))
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    ex = summary["execution"]
    assert (ex["rows"], ex["passed"], ex["prompts"]) == (8, 3, 4)
    assert ex["pass_at_1"] == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    assert ex["pass_at_k"]["2"] == pytest.approx((1 + 1 + 0 + 0) / 4)
    assert ex["failure_reasons"] == {"AssertionError": 3, "TypeError": 2}  # None - float in task 3
    assert ex["qualified"] is False and summary["qualified"] is False and rc == EXIT_NOT_QUALIFIED
    ag = ex["agreement"]
    assert ag["passing_rows"] == 3 and ag["failing_rows"] == 5
    # the fixed reference judge ranks every working answer above every stub copy
    assert ag["similarity"]["auc"] == 1.0 and ag["precision"]["auc"] == 1.0
    assert ag["judge_pass_test_fail"]["count"] == 0
    ds = load_from_disk(str(tmp_path / "eval"))["eval"]
    assert ds["passed"] == [True, True, True, False, False, False, False, False]
    assert ds["pass_at_1"][:4] == [1.0, 1.0, 0.5, 0.5]
    assert ds["exec_reason"][0] == "passed" and ds["exec_reason"][3] == "AssertionError"
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Unit tests (execution)" in report and "| similarity |" in report
    printed = capsys.readouterr().out
    assert "pass@1 (unit tests): 37.5% (3/8 rows passed, 4 prompts)" in printed
    assert "threshold >= 50: not met" in printed
    verdict = next(line for line in printed.splitlines() if line.startswith("verdict:"))
    assert verdict.startswith("verdict: NOT QUALIFIED") and "pass@1 % (unit tests) 37.5 < 50 (bar)" in verdict
    assert summary["criteria"][-1] == {"name": "pass@1 % (unit tests)", "value": 37.5, "bar": 50.0, "passed": False}


def test_copied_stubs_neither_pass_nor_qualify(tmp_path):
    tasks = humaneval_rows()
    data = write_batch(tmp_path / "batch.jsonl", [[copy_stub(t)] for t in tasks])
    rc = main(argv(data, tmp_path / "eval", "--allow_code_execution"))
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["execution"]["pass_at_1"] == 0.0
    assert summary["mean_precision"] < 50 and summary["mean_similarity"] < 50
    assert rc == EXIT_NOT_QUALIFIED


def test_judge_passing_rows_that_fail_are_listed(tmp_path):
    """A near-copy of the reference with one wrong operator: the reference judge passes it,
    the tests do not; the report names the row."""
    tasks = humaneval_rows()
    wrong = fence(tasks[2]["prompt"] + tasks[2]["canonical_solution"].replace("balance < 0", "balance > 0"))
    cands = [[correct(tasks[0])], [correct(tasks[1])], [wrong], [correct(tasks[3])]]
    data = write_batch(tmp_path / "batch.jsonl", cands)
    assert main(argv(data, tmp_path / "eval", "--allow_code_execution")) == EXIT_OK
    ag = json.loads((tmp_path / "eval" / "summary.json").read_text())["execution"]["agreement"]
    assert ag["judge_pass_test_fail"] == {"count": 1, "rows": [2]}
    assert "row 2 `from typing import List def below_zero" in (tmp_path / "eval" / "report.md").read_text()


def test_a_pass_rate_bar_that_is_met_keeps_the_judges_verdict(tmp_path):
    tasks = humaneval_rows()
    data = write_batch(tmp_path / "batch.jsonl", [[correct(t)] for t in tasks])
    assert main(argv(data, tmp_path / "eval", "--allow_code_execution", "--pass_rate_threshold", "100")) == EXIT_OK
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["execution"]["qualified"] is True


def test_no_test_column_no_execution_object(tmp_path):
    path = tmp_path / "batch.jsonl"
    path.write_text(json.dumps({"instructions": "i", "target_responses": "r", "candidate_responses": "r"}) + "\n")
    main(argv(path, tmp_path / "eval"))
    assert "execution" not in json.loads((tmp_path / "eval" / "summary.json").read_text())


def test_consent_without_tests_warns_that_nothing_runs(tmp_path, caplog):
    path = tmp_path / "batch.jsonl"
    path.write_text(json.dumps({"instructions": "i", "target_responses": "r", "candidate_responses": "r"}) + "\n")
    with caplog.at_level("WARNING", logger="llamaduo.evaluation"):
        main(argv(path, tmp_path / "eval", "--allow_code_execution"))
    assert "allow_code_execution is set but" in caplog.text and "pass@1 is not measured" in caplog.text
    assert "execution" not in json.loads((tmp_path / "eval" / "summary.json").read_text())


@pytest.fixture
def no_model_load(monkeypatch):
    import llamaduo.judging.reference as reference

    def refuse(*a, **k):
        raise AssertionError("the embedding model was loaded before the input check")
    monkeypatch.setattr(reference, "_load_embedder", refuse)


@pytest.mark.parametrize("extra, message", [
    ((), "has a 'test' column: evaluation would run the model-written code against it. That needs your "
         "consent: set allow_code_execution: true"),
    (("--allow_code_execution", "--pass_rate_threshold", "0.5e3"), "pass_rate_threshold must be within 0-100"),
])
def test_tests_without_consent_exit_2_before_any_model_load(tmp_path, no_model_load, extra, message):
    data = write_batch(tmp_path / "batch.jsonl", [[correct(t)] for t in humaneval_rows()])
    with pytest.raises(UsageError, match=message):
        main(argv(data, tmp_path / "eval", *extra))


def test_a_pass_rate_bar_without_tests_exits_2(tmp_path, no_model_load):
    path = tmp_path / "batch.jsonl"
    path.write_text(json.dumps({"instructions": "i", "target_responses": "r", "candidate_responses": "r"}) + "\n")
    with pytest.raises(UsageError, match="pass_rate_threshold is set but .* has no 'test' column"):
        main(argv(path, tmp_path / "eval", "--pass_rate_threshold", "50"))


def test_the_script_says_how_to_opt_in(repo_root, tmp_path):
    import subprocess
    import sys

    data = write_batch(tmp_path / "batch.jsonl", [[correct(t)] for t in humaneval_rows()])
    proc = subprocess.run([sys.executable, "evaluation.py", *argv(data, tmp_path / "eval")], cwd=repo_root,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "allow_code_execution: true" in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert "Traceback" not in proc.stderr and len(errors) == 1 and "allow_code_execution" in errors[0]


# --------------------------------------------------------------------------- isolation and secrets


def test_no_kernel_sandbox_exits_2_before_any_model_load(tmp_path, no_model_load, monkeypatch):
    from llamaduo import sandbox

    data = write_batch(tmp_path / "batch.jsonl", [[correct(t)] for t in humaneval_rows()])
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH
    sandbox._bwrap_problem.cache_clear()
    try:
        with pytest.raises(UsageError, match="no kernel sandbox for model-written code: bubblewrap .bwrap. is not "
                                             "installed.*set execution_isolation: none"):
            main(argv(data, tmp_path / "eval", "--allow_code_execution"))
        with pytest.raises(UsageError, match="execution_isolation"):
            main(argv(data, tmp_path / "eval", "--allow_code_execution", "--execution_isolation", "docker"))
    finally:
        monkeypatch.undo()
        sandbox._bwrap_problem.cache_clear()
    assert not (tmp_path / "eval").exists()


def test_isolation_none_runs_and_warns_that_it_is_unsafe(tmp_path, caplog):
    tasks = humaneval_rows()
    data = write_batch(tmp_path / "batch.jsonl", [[correct(t)] for t in tasks])
    with caplog.at_level("WARNING", logger="llamaduo.evaluation"):
        assert main(argv(data, tmp_path / "eval", "--allow_code_execution", "--execution_isolation", "none")) == EXIT_OK
    assert "UNSAFE: execution_isolation is none" in caplog.text
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["execution"]["isolation"] == "none"


def test_a_secret_in_an_answer_never_reaches_the_output(tmp_path, monkeypatch):
    """An answer that carries the evaluation's own keys (hard-coded, echoed) into its failure
    reason: exec_reason, the report, summary.json and every file of the output hold `***`."""
    key, cfg_key = "sk-canary-openai-5e1f0c", "cfg-canary-7d2b9a41"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    tasks = humaneval_rows()
    leak = fence(f"def {tasks[0]['entry_point']}(*args):\n    raise ValueError('{key} and {cfg_key}')\n")
    data = write_batch(tmp_path / "batch.jsonl", [[leak]] + [[correct(t)] for t in tasks[1:]])
    main(argv(data, tmp_path / "eval", "--allow_code_execution", "--service_llm_api_key", cfg_key))
    ds = load_from_disk(str(tmp_path / "eval"))["eval"]
    assert ds["exec_reason"][0] == "ValueError: *** and ***"
    files = b"".join(p.read_bytes() for p in (tmp_path / "eval").rglob("*") if p.is_file())
    assert key.encode() not in files and cfg_key.encode() not in files
