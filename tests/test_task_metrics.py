"""Task metrics: each metric's semantics on edge cases, the Wilson interval at the edges, and
evaluation.py end to end (in process) with `service_llm_provider: none` and the tests' exit
codes: a bar above the value 3, below it 0, a missing input 2 before any work."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from datasets import load_from_disk

from llamaduo.errors import EXIT_NOT_QUALIFIED, EXIT_OK, UsageError
from llamaduo.judging import task_metrics as tm
from llamaduo.judging.aggregate import wilson_ci95
from llamaduo.judging.passk import pass_rate_stats
from llamaduo.pipeline.evaluation import main

HUMANEVAL = Path(__file__).parent / "data" / "humaneval_shaped.jsonl"


# --------------------------------------------------------------------------- Wilson


def test_wilson_keeps_a_width_at_0_of_n_and_n_of_n():
    lo, hi = wilson_ci95(0.0, 44)
    assert lo == 0.0 and hi == pytest.approx(100 * 3.8414588 / (44 + 3.8414588), abs=1e-4)  # z^2/(n+z^2)
    assert 7.9 < hi < 8.1
    lo, hi = wilson_ci95(1.0, 20)
    assert hi == 100.0 and lo == pytest.approx(100 * 20 / (20 + 3.8414588), abs=1e-4)
    assert 83 < lo < 84


def test_wilson_matches_the_textbook_value_inside():
    # 7 of 20: the closed form, worked by hand from Wilson (1927)
    z, n, p = 1.959963984540054, 20, 0.35
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = wilson_ci95(p, n)
    assert (lo, hi) == pytest.approx((100 * (centre - half), 100 * (centre + half)))
    assert 18.1 < lo < 18.2 and 56.7 < hi < 56.8
    assert wilson_ci95(0.5, 0) is None


def test_pass_rate_ci_is_wilson_not_the_collapsing_normal_interval():
    none_pass = pass_rate_stats({f"t{i}": [False] for i in range(44)})
    assert none_pass["pass_rate"] == 0.0
    assert none_pass["pass_rate_ci95"][0] == 0.0 and 7.9 < none_pass["pass_rate_ci95"][1] < 8.1
    all_pass = pass_rate_stats({f"t{i}": [True] for i in range(20)})
    assert all_pass["pass_rate_ci95"][1] == 100.0 and all_pass["pass_rate_ci95"][0] < 84


# --------------------------------------------------------------------------- exact_match


@pytest.mark.parametrize("cand, ref, want", [
    ("Paris", "paris", 100), ("  PARIS.  ", "Paris", 100), ("Paris?!.", "paris", 100),
    ("New   York\n City", "new york city", 100), ("Paris, France", "Paris", 0),
    ("paris. .", "Paris", 100), ("", "", 100), ("", "x", 0), ("Straße", "STRASSE", 100),  # casefold
    ("Mr. Smith", "mr smith", 0),  # only trailing punctuation goes
])
def test_exact_match_normalisation(cand, ref, want):
    assert tm.exact_match(cand, ref) == want


def test_exact_match_answer_pattern_extracts_first_group_and_no_match_scores_0():
    pat = tm.compile_pattern(r"(?i)answer:\s*(\w+)")
    assert tm.exact_match("Let me think. Answer: Paris. Answer: Rome", "Paris", pat) == 100  # first match
    assert tm.exact_match("Answer: Rome", "answer: rome", pat) == 100  # applied to the reference where it matches
    assert tm.exact_match("Paris", "Paris", pat) == 0  # no match in the reply: no answer
    no_group = tm.compile_pattern(r"\d+")
    assert tm.exact_match("it is 42 or 43", "42", no_group) == 100  # no group: the whole match
    with pytest.raises(UsageError, match="not a valid regular expression"):
        tm.compile_pattern("(unclosed")


# --------------------------------------------------------------------------- choice


def test_choice_labels_are_whole_words_and_exactly_one_must_occur():
    labels = tm.LabelSet(["positive", "negative", "very positive", "non-spam", "spam"])
    assert labels.found("The sentiment is Positive.") == ["positive"]
    assert labels.found("positively not") == []  # whole word only
    assert labels.found("VERY   positive!") == ["very positive"]  # inside a longer label: not counted
    assert labels.found("it is non-spam") == ["non-spam"]  # the hyphen is part of the word
    assert labels.predict("positive or negative") is None  # two labels: no answer
    assert labels.predict("I cannot tell") is None


def _choice(cands, refs, labels=(), pattern=None):
    settings = tm.MetricSettings(tm.CHOICE, None, tuple(labels), pattern)
    prep = tm.prepare(settings, refs, ["target_responses"], "data", has_tests=False)
    return tm.score_rows(prep, cands, refs)


def test_choice_accuracy_macro_f1_and_confusion():
    refs = ["spam", "spam", "ham", "ham", "ham"]
    cands = ["This is spam.", "ham", "HAM", "spam or ham", "it is ham"]
    res = _choice(cands, refs)  # labels derived from the references
    assert res.scores == [100, 0, 100, 0, 100]
    assert res.extra["labels"] == ["spam", "ham"] and res.extra["no_single_label"] == 1
    assert res.extra["confusion"] == {"spam": {"spam": 1, "ham": 1, tm.NO_LABEL: 0},
                                      "ham": {"spam": 0, "ham": 2, tm.NO_LABEL: 1}}
    # spam: tp 1, predicted 1, gold 2 -> F1 2/3; ham: tp 2, predicted 3, gold 3 -> F1 2/3
    assert res.extra["macro_f1"] == pytest.approx(100 * 2 / 3, abs=1e-3)


def test_choice_reference_label_from_a_longer_reference_and_the_pattern():
    res = _choice(["Label: B", "Label: A (not B)"], ["The answer is A.", "A"], labels=["A", "B"],
                  pattern=r"Label:\s*(\w+)")
    assert res.scores == [0, 100]  # the pattern narrows the second reply to "A"
    with pytest.raises(UsageError, match="at least 2 labels"):
        _choice(["x"], ["yes", "Yes."])
    with pytest.raises(UsageError, match="not one of the labels"):
        _choice(["x"], ["maybe"], labels=["yes", "no"])


# --------------------------------------------------------------------------- json_match


@pytest.mark.parametrize("reply, want", [
    ('{"name": " ada LOVELACE ", "year": 1815, "tags": ["Math"]}', 100),
    ('```json\n{"name": "Ada Lovelace", "year": 1816, "tags": ["math"]}\n```', 200 / 3),
    ('Here it is:\n```\n{"name": "Ada Lovelace"}\n```\nDone.', 100 / 3),
    ('{"name": "Ada Lovelace", "year": "1815", "tags": "math"}', 100 / 3),  # "1815" is not 1815
    ('The answer is {"name": "Ada Lovelace"}', 0),  # prose around a bare object: unparsable
    ('```json\n{"name": "Ada Lovelace", "year": 1815}\n', 200 / 3),  # a fence cut at max_new_tokens
    ('```JSON {"name": "Ada Lovelace"}```', 100 / 3), ('```python\n{"name": "Ada Lovelace"}\n```', 0),
    ('["Ada Lovelace"]', 0), ("not json", 0), ("", 0),
])
def test_json_match_share_of_reference_keys(reply, want):
    ref = {"name": "Ada Lovelace", "year": 1815, "tags": ["math"]}
    assert tm.json_match(tm.parse_json_object(reply), ref) == pytest.approx(want)


def test_json_match_counts_unparsable_and_needs_json_references():
    refs = ['{"a": 1, "b": true}', '```json\n{"a": 2}\n```', '{"a": 3}']
    settings = tm.MetricSettings(tm.JSON_MATCH)
    prep = tm.prepare(settings, refs, ["target_responses"], "data", has_tests=False)
    res = tm.score_rows(prep, ['{"a": 1, "b": 1}', '{"a": 2.0}', "{a: 3}"], refs)
    assert res.scores == [50, 100, 0]  # true is not 1; 2.0 equals 2
    assert res.extra == {"unparsable": 1}
    with pytest.raises(UsageError, match="json_match needs a JSON object"):
        tm.prepare(settings, ["plain text"], ["target_responses"], "data", has_tests=False)


# --------------------------------------------------------------------------- token_f1 and rouge_l


def test_token_f1_is_squad_f1():
    assert tm.token_f1("The Eiffel tower!", "eiffel Tower") == 100
    # pred [in, paris, france], gold [paris]: P 1/3, R 1 -> F1 0.5
    assert tm.token_f1("in Paris, France", "Paris") == pytest.approx(50)
    assert tm.token_f1("a the an", "") == 100  # both empty after normalisation
    assert tm.token_f1("", "Paris") == 0 and tm.token_f1("London", "Paris") == 0
    # repeated tokens count as many times as both have them: pred [a1 x3], gold [a1 x1] -> P 1/3, R 1
    assert tm.token_f1("cat cat cat", "cat") == pytest.approx(50)


def test_rouge_l_is_the_f_measure():
    # LCS of "the cat sat on the mat" and "the cat lay on the mat" = 5 tokens; P = R = 5/6
    assert tm.rouge_l(["the cat sat on the mat"], ["the cat lay on the mat"])[0] == pytest.approx(100 * 5 / 6)
    # candidate 2 tokens, both in the 6-token reference: P 1, R 1/3 -> F 0.5
    assert tm.rouge_l(["cat mat"], ["the cat lay on the mat"])[0] == pytest.approx(50)


# --------------------------------------------------------------------------- judge agreement


def test_agreement_is_auc_for_right_wrong_metrics_and_correlation_for_continuous_ones():
    judge = {"similarity": [90.0, 85.0, 40.0, 95.0], "precision": [80.0, 20.0, 30.0, 70.0]}
    bars = {"similarity": 80.0, "precision": 50.0}
    ag = tm.agreement(tm.MetricSettings(tm.EXACT_MATCH), [100.0, 0.0, 100.0, 0.0], judge, bars)
    # right rows 0, 2 vs wrong rows 1, 3: similarity 90>85 and 90<95, 40<85 and 40<95 -> AUC 1/4
    assert ag["similarity"]["auc"] == 0.25 and ag["similarity"]["mean_passing"] == 65.0
    assert ag["judge_pass_test_fail"] == {"count": 1, "rows": [3]}  # row 3: judge passed, answer wrong
    ag = tm.agreement(tm.MetricSettings(tm.TOKEN_F1), [10.0, 20.0, 30.0, None], judge, bars)
    assert ag["rows"] == 3
    assert ag["similarity"]["spearman"] == -1.0 and ag["precision"]["spearman"] == pytest.approx(-0.5)


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("settings, message", [
    (tm.MetricSettings("bleu"), "unknown task_metric"),
    (tm.MetricSettings(None, 50), "task_metric is not"),
    (tm.MetricSettings("exact_match", float("nan")), "within 0-100"),
    (tm.MetricSettings("exact_match", 101), "within 0-100"),
    (tm.MetricSettings("exact_match", 0.8), "did you mean 80"),
    (tm.MetricSettings("exact_match", labels=("a", "b")), "labels is set"),
    (tm.MetricSettings("choice", labels=("a", "A")), "repeat a label"),
    (tm.MetricSettings("rouge_l", answer_pattern="(x)"), "answer_pattern applies"),
    (tm.MetricSettings("exact_match", answer_pattern="[a-"), "not a valid regular expression"),
])
def test_bad_settings_are_usage_errors(settings, message):
    with pytest.raises(UsageError, match=message):
        tm.check_settings(settings)


# --------------------------------------------------------------------------- end to end


def write_rows(path: Path, pairs: list[tuple[str, str]], **cols) -> Path:
    with path.open("w") as fh:
        for i, (cand, ref) in enumerate(pairs):
            fh.write(json.dumps({"instructions": f"Question {i}?", "target_responses": ref,
                                 "candidate_responses": cand, "model_id": "m", "model_sha": "s",
                                 **{k: v[i] for k, v in cols.items()}}) + "\n")
    return path


def run_none(data: Path, out: Path, *extra: str) -> int:
    return main(["--service_llm_provider", "none", "--lm_response_ds_id", str(data), "--eval_ds_id", str(out),
                 *extra])


QA = [("Paris.", "Paris"), ("answer: berlin", "Berlin"), ("Rome", "Madrid"), ("  LISBON ", "Lisbon")]


def test_provider_none_exact_match_threshold_decides_exit_code(tmp_path, capsys):
    data = write_rows(tmp_path / "qa.jsonl", QA)
    rc = run_none(data, tmp_path / "hi", "--task_metric", "exact_match", "--task_metric_threshold", "60")
    assert rc == EXIT_NOT_QUALIFIED  # 2 of 4 right = 50 < 60
    s = json.loads((tmp_path / "hi" / "summary.json").read_text())
    block = s["task_metric"]
    assert (block["name"], block["mean"], block["n"], block["threshold"], block["met"]) == ("exact_match", 50.0, 4, 60, False)
    assert [block["ci_low"], block["ci_high"]] == pytest.approx(wilson_ci95(0.5, 4), abs=1e-4)
    assert s["calls"] == 0 and s["cost_usd"] == 0 and s["judged"] is False and s["criteria"] == [
        {"name": "exact_match", "value": 50.0, "bar": 60, "passed": False}]
    verdict = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("verdict:"))
    assert verdict == "verdict: NOT QUALIFIED: exact_match 50.0 < 60 (bar)"
    ds = load_from_disk(str(tmp_path / "hi"))["eval"]
    assert ds["task_score"] == [100, 0, 0, 100] and ds["similarity_scores"] == [None] * 4
    report = (tmp_path / "hi" / "report.md").read_text()
    assert "## Task metric: exact_match" in report and not (tmp_path / "hi" / "scores_histogram.png").exists()
    assert "| 2 | Question 2? | - | n/a | n/a | ? | 0.0 |" in report  # the all-rows table carries task_score

    rc = run_none(data, tmp_path / "lo", "--task_metric", "exact_match", "--task_metric_threshold", "40")
    assert rc == EXIT_OK
    assert json.loads((tmp_path / "lo" / "summary.json").read_text())["task_metric"]["met"] is True
    # with the pattern, "answer: berlin" is read as "berlin"; "Paris." has no "answer:" and scores 0
    rc = run_none(data, tmp_path / "pat", "--task_metric", "exact_match", "--task_metric_threshold", "50",
                  "--answer_pattern", r"answer:\s*(\w+)")
    assert load_from_disk(str(tmp_path / "pat"))["eval"]["task_score"] == [0, 100, 0, 0]
    assert rc == EXIT_NOT_QUALIFIED


def test_choice_end_to_end_reports_confusion_and_macro_f1(tmp_path):
    pairs = [("positive", "positive"), ("negative!", "positive"), ("It is negative.", "negative"),
             ("neutral", "negative")]
    data = write_rows(tmp_path / "cls.jsonl", pairs)
    rc = run_none(data, tmp_path / "e", "--task_metric", "choice", "--labels", "positive", "negative",
                  "--task_metric_threshold", "50")
    assert rc == EXIT_OK
    block = json.loads((tmp_path / "e" / "summary.json").read_text())["task_metric"]
    assert block["mean"] == 50.0 and block["no_single_label"] == 1
    # positive: tp 1, predicted 1, gold 2 -> F1 2/3; negative: tp 1, predicted 2, gold 2 -> F1 1/2
    assert block["macro_f1"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2, abs=1e-3)
    report = (tmp_path / "e" / "report.md").read_text()
    assert "### Confusion matrix" in report and "| positive | 1 | 1 | 0 |" in report


def test_json_match_end_to_end_with_the_reference_judge_shows_agreement(tmp_path):
    refs = ['{"city": "Paris", "n": 1}', '{"city": "Rome", "n": 2}', '{"city": "Oslo", "n": 3}']
    cands = ['```json\n{"city": "paris", "n": 1}\n```', '{"city": "Rome", "n": 5}', "Oslo, three"]
    data = write_rows(tmp_path / "j.jsonl", list(zip(cands, refs)))
    rc = main(["--service_llm_provider", "reference", "--lm_response_ds_id", str(data),
               "--eval_ds_id", str(tmp_path / "e"), "--task_metric", "json_match", "--task_metric_threshold", "60",
               "--avg_similarity_threshold", "0", "--avg_precision_threshold", "0"])
    s = json.loads((tmp_path / "e" / "summary.json").read_text())
    block = s["task_metric"]
    assert block["mean"] == pytest.approx(50.0) and block["unparsable"] == 1 and block["met"] is False
    assert rc == EXIT_NOT_QUALIFIED and s["qualified"] is False
    assert block["agreement"]["rows"] == 3 and "spearman" in block["agreement"]["similarity"]
    assert s["mean_similarity"] is not None  # the judge still judged


@pytest.mark.parametrize("extra, message", [
    (["--task_metric", "unit_tests", "--task_metric_threshold", "50"], "needs a 'test' column"),
    (["--task_metric", "json_match", "--task_metric_threshold", "50"], "needs a JSON object"),
    (["--task_metric", "choice", "--task_metric_threshold", "50", "--labels", "x", "y"], "not one of the labels"),
    (["--task_metric", "exact_match", "--task_metric_threshold", "nan"], "must be a finite number"),  # the generic check at load refuses NaN first
    (["--task_metric", "exact_match", "--task_metric_threshold", "50", "--answer_pattern", "(("], "regular expression"),
    (["--task_metric", "exact_match"], "set task_metric_threshold"),
    ([], "set task_metric"),
])
def test_missing_inputs_exit_2_before_any_work(tmp_path, extra, message):
    data = write_rows(tmp_path / "qa.jsonl", QA)
    with pytest.raises(UsageError, match=message) as err:
        run_none(data, tmp_path / "e", *extra)
    assert err.value.exit_code == 2
    assert not (tmp_path / "e" / "summary.json").exists()


def test_unit_tests_metric_is_pass_at_1_with_a_wilson_interval(tmp_path):
    tasks = [json.loads(line) for line in HUMANEVAL.read_text().splitlines()][:3]

    def fence(code: str) -> str:
        return f"```python\n{code}```"

    cands = [fence(tasks[0]["prompt"] + tasks[0]["canonical_solution"]),
             fence(tasks[1]["prompt"] + "    pass\n"), fence(tasks[2]["prompt"] + "    pass\n")]
    data = write_rows(tmp_path / "code.jsonl", list(zip(cands, [fence(t["prompt"] + t["canonical_solution"]) for t in tasks])),
                      test=[t["test"] for t in tasks], entry_point=[t["entry_point"] for t in tasks])
    rc = run_none(data, tmp_path / "e", "--task_metric", "unit_tests", "--task_metric_threshold", "30",
                  "--allow_code_execution")
    s = json.loads((tmp_path / "e" / "summary.json").read_text())
    block = s["task_metric"]
    assert block["mean"] == pytest.approx(100 / 3, abs=1e-3) and block["n"] == 3 and rc == EXIT_OK
    assert [block["ci_low"], block["ci_high"]] == pytest.approx(wilson_ci95(1 / 3, 3), abs=1e-3)
    assert load_from_disk(str(tmp_path / "e"))["eval"]["task_score"] == [100, 0, 0]
