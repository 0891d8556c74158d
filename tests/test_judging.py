"""Tests for llamaduo.judging: aggregation maths, the report, and the offline reference judge."""
from __future__ import annotations

import json
import math
import statistics

import pytest

from llamaduo.judging import (
    REFERENCE_EVALUATOR,
    RepeatScore,
    ReferenceJudge,
    Thresholds,
    aggregate_row,
    coverage,
    embedding_model_dir,
    mean_ci95,
    one_screen_summary,
    render_report,
    summarize,
    too_many_failures,
    worst_rows,
    write_histogram,
)
from llamaduo.judging.report import histogram_title

# Student-t 0.975 quantiles from a printed table, so the CI test does not reuse scipy's answer.
T975 = {2: 4.302653, 4: 2.776445}


def ok(sim: float, prec: float, why: str = "r") -> RepeatScore:
    return RepeatScore(sim, prec, f"sim {why}", f"prec {why}")


# ----------------------------------------------------------------------------- aggregation


def test_row_mean_ignores_failures_instead_of_scoring_zero():
    row = aggregate_row([ok(80, 60), RepeatScore.failed("not JSON"), ok(90, 70)])
    assert row.similarity == 85 and row.precision == 65
    assert row.failures == 1
    assert "repeat 1: not JSON" in row.failure_reason
    assert row.similarity_std == pytest.approx(statistics.stdev([80, 90]))


def test_row_with_every_repeat_failed_has_no_score():
    row = aggregate_row([RepeatScore.failed("500"), RepeatScore.failed("out of range")])
    assert row.similarity is None and row.precision is None and not row.scored
    assert row.failures == 2


def test_single_repeat_has_no_std_rather_than_zero():
    row = aggregate_row([ok(50, 50)])
    assert row.similarity_std is None and row.failure_reason is None


def test_mean_ci95_matches_student_t_table():
    mean, ci = mean_ci95([60.0, 70.0, 80.0])
    half = T975[2] * 10 / math.sqrt(3)
    assert mean == 70
    assert ci == pytest.approx([70 - half, 70 + half], abs=1e-4)
    values = [10.0, 20.0, 30.0, 40.0, 50.0]
    mean, ci = mean_ci95(values)
    half = T975[4] * statistics.stdev(values) / math.sqrt(5)
    assert ci == pytest.approx([30 - half, 30 + half], abs=1e-4)
    assert mean_ci95([42.0]) == (42.0, None)
    assert mean_ci95([]) == (None, None)


def test_coverage_counts_the_threshold_itself():
    assert coverage([49.9, 50.0, 51, 10], 50) == 0.5
    assert coverage([], 50) is None


def _rows(pairs):
    return [aggregate_row([ok(s, p)]) for s, p in pairs]


def test_summary_numbers_and_qualification():
    rows = _rows([(80, 40), (60, 70), (70, 55)])
    s = summarize(rows, Thresholds(similarity=70, precision=55, coverage=65))
    assert s["mean_similarity"] == 70 and s["mean_precision"] == 55
    assert s["coverage_similarity"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["coverage_precision"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["qualified"] is True
    s = summarize(rows, Thresholds(similarity=70.1, precision=55, coverage=65))
    assert s["qualified"] is False
    json.dumps(s)  # summary.json must serialise


def test_qualification_uses_unrounded_means():
    rows = _rows([(69.99996, 90)])
    assert summarize(rows, Thresholds(70, 10))["qualified"] is False


def test_failure_ratio_and_limit():
    rows = [aggregate_row([ok(90, 90), RepeatScore.failed("x")]), aggregate_row([ok(90, 90), ok(90, 90)])]
    s = summarize(rows, Thresholds(50, 50, max_failure_ratio=0.25))
    assert s["failures"] == 1 and s["judgements"] == 4 and s["failure_ratio"] == 0.25
    assert not too_many_failures(s)
    s = summarize(rows, Thresholds(50, 50, max_failure_ratio=0.2))
    assert too_many_failures(s)
    dead = summarize([aggregate_row([RepeatScore.failed("x")])], Thresholds(50, 50, max_failure_ratio=1.0))
    assert too_many_failures(dead) and dead["qualified"] is False


# ----------------------------------------------------------------------------- report


def _report_rows():
    rows = []
    for i, (s, p) in enumerate([(90, 90), (10, 30), (50, 50), (20, 10), (95, 99), (40, 45), (30, 35)]):
        rows.append({
            "instructions": f"task {i}", "target_responses": f"ref {i}", "candidate_responses": f"cand {i}",
            "similarity_scores": float(s), "precision_scores": float(p),
            "similarity_reasons": [f"sim reason {i}"], "precision_reasons": [f"prec reason {i}"],
            "failure_reason": None,
        })
    rows.append({"instructions": "task broken", "target_responses": "r", "candidate_responses": "c",
                 "similarity_scores": None, "precision_scores": None, "similarity_reasons": [],
                 "precision_reasons": [], "failure_reason": "repeat 0: not JSON"})
    return rows


def test_worst_rows_are_the_lowest_mean_scores():
    worst = worst_rows(_report_rows())
    assert [r["instructions"] for r in worst] == ["task 3", "task 1", "task 6", "task 5", "task 2"]


def test_report_and_histogram(tmp_path):
    rows = _report_rows()
    scored = [aggregate_row([ok(r["similarity_scores"], r["precision_scores"])]) for r in rows[:-1]]
    s = summarize(scored, Thresholds(60, 60))
    s.update(evaluator="test-judge", cost_usd=0.0123, tokens={"input": 10, "output": 5, "total": 15})
    png = write_histogram([r.similarity for r in scored], [r.precision for r in scored],
                          tmp_path / "h.png", thresholds=(60, 60), title=histogram_title(
                              {**s, "model_ids": ["me/tiny-lora"]}, "outputs/llamaduo/round_2/evaluation"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    assert histogram_title({**s, "model_ids": ["me/tiny-lora"]}, "out/round_2/evaluation") == \
        "Evaluation scores: me/tiny-lora (round 2), judge test-judge"
    md = render_report(s, rows, histogram_name="h.png")
    assert "![score histogram](h.png)" in md
    assert "NOT QUALIFIED" in md
    assert md.index("task 3") < md.index("task 1") < md.index("task 6")
    assert "prec reason 3" in md and "task 0" not in md[:md.index("## All rows")]  # not among the worst
    assert "| 0 | task 0 | - | 90.0 | 90.0 | ? |" in md  # every row, named by its instruction
    assert "repeat 0: not JSON" in md
    screen = one_screen_summary(s, tmp_path)
    assert "$0.0123" in screen and len(screen.splitlines()) < 25


# ----------------------------------------------------------------------------- reference judge


@pytest.fixture(scope="module")
def judge():
    return ReferenceJudge()


def test_embedding_model_is_found_inside_the_wheel():
    assert (embedding_model_dir() / "model.safetensors").is_file()
    assert "all-MiniLM-L6-v2" in REFERENCE_EVALUATOR and "ROUGE-L precision" in REFERENCE_EVALUATOR


def test_reference_judge_prefers_a_paraphrase(judge):
    ref = "def add(a, b):\n    return a + b"
    para = "def add(x, y):\n    # sum the two numbers\n    return x + y"
    unrelated = "The Eiffel Tower is in Paris and was finished in 1889."
    para_s, unrel_s = judge.score([para, unrelated], [ref, ref])
    assert para_s.similarity > unrel_s.similarity + 30
    assert para_s.precision > unrel_s.precision
    assert 0 <= unrel_s.similarity <= 100 and 0 <= unrel_s.precision <= 100


def test_reference_precision_is_rouge_l_precision(judge):
    ref = "the cat sat on the mat"
    (same,) = judge.score([ref], [ref])
    assert same.similarity == pytest.approx(100, abs=0.01) and same.precision == 100
    # 6 of the candidate's 12 tokens form the LCS with the reference -> precision 50.
    (padded,) = judge.score([ref + " and then it went to sleep"], [ref])
    assert padded.precision == pytest.approx(50.0)


def test_reference_judge_does_not_reward_copying_the_stub(judge):
    """HumanEval-shaped rows: the instruction is a stub that the reference repeats. Copying the
    stub and adding `pass` used to score ~85-99 similarity and ~98 precision (measured); it
    must now score below an answer with the reference's body, on both scores, every row."""
    import json
    from pathlib import Path

    rows = [json.loads(x) for x in (Path(__file__).parent / "data" / "humaneval_shaped.jsonl").read_text().splitlines()]
    for r in rows:
        ref = f"```python\n{r['prompt']}{r['canonical_solution']}```"
        copy = f"```python\n{r['prompt']}    pass\n```"
        body = f"```python\n{r['prompt']}{r['canonical_solution']}```"
        old_copy, = judge.score([copy], [ref])  # without the instruction: the copy looks great
        assert old_copy.similarity > 80 and old_copy.precision > 95
        copied, answered = judge.score([copy, body], [ref, ref], [r["prompt"]] * 2)
        assert copied.similarity < 60 and copied.precision < 10
        assert answered.similarity > 95 and answered.precision > 95
    assert "not copied from the instruction" in REFERENCE_EVALUATOR and "not correctness" in REFERENCE_EVALUATOR


def test_reference_judge_falls_back_when_the_reference_only_repeats_the_instruction(judge):
    (s,) = judge.score(["print('hi')"], ["print('hi')"], ["print('hi')"])
    assert s.similarity == pytest.approx(100, abs=0.01) and s.precision == 100


def test_report_fences_survive_answers_with_their_own_fences():
    rows = _report_rows()
    rows[3]["candidate_responses"] = "```python\ndef f():\n    return 1\n```\nDone."
    md = render_report(summarize([aggregate_row([ok(1, 1)])], Thresholds(50, 50)), rows)
    assert "````\n```python\ndef f():\n    return 1\n```\nDone.\n````" in md
