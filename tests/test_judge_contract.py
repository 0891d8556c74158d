"""The judge contract (llamaduo.judging.contract) and the judge chosen by name
(llamaduo.judging.judges): the reply schema and its reasons, the output columns declared once,
and evaluation.py calling whichever judge it is handed. Fast: no model, no network."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset, Value, load_from_disk

from llamaduo.errors import EXIT_OK, UsageError
from llamaduo.judging import aggregate_row
from llamaduo.judging import contract
from llamaduo.judging.contract import (
    JUDGE_SCHEMA,
    PLACEHOLDERS,
    REPLY_RANGE,
    SCORES,
    JudgeOutcome,
    OutputColumn,
    RepeatScore,
    output_columns,
    output_features,
    parse_judgement,
    reply_key,
)
from llamaduo.judging.judges import REFERENCE, LLMJudge, check_judge_name, judge_names, make_judge
from llamaduo.judging.reference import ReferenceJudge
from llamaduo.pipeline import evaluation
from llamaduo.service_llm import InvalidReply, ServiceLLMArgs

GOOD = {"similarity_assessment": {"score": 72, "reason": "close"},
        "precision_assessment": {"score": 64.5, "reason": "mostly right"}}


# --------------------------------------------------------------------------- the reply


def test_parse_judgement_ok_and_string_scores():
    assert parse_judgement(json.dumps(GOOD)) == RepeatScore(72.0, 64.5, "close", "mostly right")
    s = dict(GOOD, precision_assessment={"score": " 88 ", "reason": "x"})
    assert parse_judgement(json.dumps(s)).precision == 88.0


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d.pop("precision_assessment"), "missing key 'precision_assessment'"),
    (lambda d: d["similarity_assessment"].pop("score"), "missing key 'similarity_assessment.score'"),
    (lambda d: d["similarity_assessment"].update(score="high"), "not a number"),
    (lambda d: d["similarity_assessment"].update(score=True), "not a number"),
    (lambda d: d["similarity_assessment"].update(score=None), "not a number"),
    (lambda d: d["similarity_assessment"].update(score=float("nan")), "not a number"),
    (lambda d: d["similarity_assessment"].update(score=101), r"'similarity_assessment.score' = 101 is out of range 1..100"),
    (lambda d: d["precision_assessment"].update(score=0), r"'precision_assessment.score' = 0 is out of range 1..100"),
    (lambda d: d["precision_assessment"].update(score=-5), "out of range"),
])
def test_a_reply_outside_the_contract_is_rejected_with_its_reason(mutate, reason):
    data = json.loads(json.dumps(GOOD))
    mutate(data)
    with pytest.raises(InvalidReply, match=reason):
        parse_judgement(json.dumps(data))


@pytest.mark.parametrize("text, reason", [
    ("", "empty reply"),
    ("I would give it 80.", "no JSON object in the reply"),
    ('{"similarity": 80, "precision": 70}', "missing key 'similarity_assessment'"),
])
def test_a_malformed_reply_is_rejected_with_its_reason(text, reason):
    with pytest.raises(InvalidReply, match=reason):
        parse_judgement(text)


def test_bounds_are_the_declared_range_inclusive():
    lo, hi = REPLY_RANGE
    data = json.loads(json.dumps(GOOD))
    data["similarity_assessment"]["score"], data["precision_assessment"]["score"] = lo, hi
    j = parse_judgement(json.dumps(data))
    assert (j.similarity, j.precision) == (float(lo), float(hi))


def test_the_schema_asks_for_what_the_parser_reads():
    props = JUDGE_SCHEMA.schema["properties"]
    assert JUDGE_SCHEMA.schema["required"] == [reply_key(s) for s in SCORES] == list(props)
    for s in SCORES:
        score = props[reply_key(s)]["properties"]["score"]
        assert (score["minimum"], score["maximum"]) == REPLY_RANGE


def test_the_shipped_prompt_uses_exactly_the_contracts_placeholders(repo_root):
    from string import Template

    template = contract.load_eval_template(str(repo_root / "src/llamaduo/defaults/prompts.toml"))
    assert set(Template(template).get_identifiers()) == set(PLACEHOLDERS)
    for s in SCORES:  # and asks for the reply the parser reads
        assert f'"{reply_key(s)}"' in template


# --------------------------------------------------------------------------- the output columns


def _rows() -> list:
    return [aggregate_row([RepeatScore(80, 60, "a", "b"), RepeatScore(70, 50, "c", "d")]),
            aggregate_row([RepeatScore.failed("invalid: no JSON")])]


def test_columns_and_features_come_from_one_declaration():
    cols = output_columns(_rows(), ["p0", "p1"], "judge-x", "2026-01-01")
    assert list(cols) == list(output_features()) == [c.name for c in contract.OUTPUT_COLUMNS]
    assert cols["similarity_scores"] == [75.0, None]
    assert cols["precision_per_repeat"] == [[60, 50], [None]]
    assert cols["failure_reason"] == [None, "repeat 0: invalid: no JSON"]
    assert cols["evaluators"] == ["judge-x"] * 2


def test_a_column_added_to_the_declaration_appears_in_values_and_features(monkeypatch):
    extra = OutputColumn("judge_disagrees", Value("bool"),
                         lambda o: None if o.row.similarity is None else abs(o.row.similarity - o.row.precision) > 15)
    monkeypatch.setattr(contract, "OUTPUT_COLUMNS", (*contract.OUTPUT_COLUMNS, extra))
    cols = output_columns(_rows(), ["p0", "p1"], "judge-x", "d")
    assert cols["judge_disagrees"] == [True, None]
    assert output_features()["judge_disagrees"] == Value("bool")
    ds = evaluation.add_columns(Dataset.from_dict({"x": [1, 2]}), cols, output_features())
    assert ds.features["judge_disagrees"] == Value("bool") and ds["judge_disagrees"] == [True, None]


# --------------------------------------------------------------------------- the judge, by name


def test_the_judge_is_chosen_by_name(tmp_path):
    ref = make_judge(ServiceLLMArgs(service_llm_provider=REFERENCE), workers=2,
                     ledger_path=tmp_path / "l.sqlite", batch_size=4)
    assert isinstance(ref, ReferenceJudge) and ref.batch_size == 4
    args = ServiceLLMArgs(service_llm_provider="openai", service_model_name="mock-judge",
                          service_llm_api_key="sk-test", service_llm_base_url="http://127.0.0.1:9/v1")
    llm = make_judge(args, workers=2, ledger_path=tmp_path / "l.sqlite", batch_size=4)
    try:
        assert isinstance(llm, LLMJudge) and llm.llm.provider == "openai" and llm.evaluator == "mock-judge"
    finally:
        llm.close()
    assert judge_names()[-1] == REFERENCE and "openai" in judge_names()


def test_an_unknown_judge_is_refused_with_a_hint():
    with pytest.raises(UsageError, match="unknown service_llm_provider 'refernce'; did you mean reference"):
        check_judge_name("refernce")


class StubJudge:
    """A third judge: evaluation.py must need nothing beyond the Judge protocol."""

    evaluator = "stub judge"

    def __init__(self):
        self.closed = False

    def estimate(self, rows, template, repeat):
        return f"stub: {len(rows)} rows x {repeat}"

    def judge(self, rows, template, repeat):
        return JudgeOutcome([f"prompt {i}" for i in range(len(rows))],
                            [[RepeatScore(95, 92, "s", "p")] * repeat for _ in range(len(rows))], self.evaluator,
                            effective_repeat=repeat)

    def close(self):
        self.closed = True


def _responses(path: Path, n: int = 3) -> Path:
    path.write_text("".join(json.dumps({"instructions": f"q{i}", "target_responses": f"a{i}",
                                        "candidate_responses": f"a{i}"}) + "\n" for i in range(n)))
    return path


def test_evaluation_runs_whichever_judge_it_is_handed(monkeypatch, tmp_path, capsys):
    stub = StubJudge()
    monkeypatch.setattr(evaluation, "make_judge", lambda args, **kw: stub)
    extra = OutputColumn("prompt_chars", Value("float64"), lambda o: float(len(o.prompt)))
    monkeypatch.setattr(contract, "OUTPUT_COLUMNS", (*contract.OUTPUT_COLUMNS, extra))
    out = tmp_path / "eval"
    argv = ["--service_llm_provider", REFERENCE, "--lm_response_ds_id", str(_responses(tmp_path / "r.jsonl")),
            "--eval_ds_id", str(out), "--eval_repeat", "2"]
    assert evaluation.main(argv) == EXIT_OK and stub.closed
    ds = load_from_disk(str(out))["eval"]
    assert ds["evaluators"] == ["stub judge"] * 3 and ds["eval_prompts"] == ["prompt 0", "prompt 1", "prompt 2"]
    assert ds["similarity_per_repeat"] == [[95.0, 95.0]] * 3 and ds["prompt_chars"] == [8.0] * 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluator"] == "stub judge" and summary["eval_repeat"] == 2 and summary["qualified"]
    assert evaluation.main([*argv, "--dry-run"]) == EXIT_OK
    assert "stub: 3 rows x 2" in capsys.readouterr().out
