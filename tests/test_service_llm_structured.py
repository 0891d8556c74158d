"""JSON extraction and the two stage schemas (pure functions: fast)."""
from __future__ import annotations

import json

import pytest

from llamaduo.service_llm import InvalidReply, Judgement, SynthPair, extract_json, parse_judgement, parse_synth_pairs

GOOD = {"similarity_assessment": {"score": 72, "reason": "close"},
        "precision_assessment": {"score": 64.5, "reason": "mostly right"}}


@pytest.mark.parametrize("text", [
    json.dumps(GOOD),
    "```json\n" + json.dumps(GOOD) + "\n```",
    "```\n" + json.dumps(GOOD) + "\n```",
    "Sure! Here is my assessment:\n" + json.dumps(GOOD, indent=2) + "\nHope this helps {really}.",
    "Thoughts {not json} then " + json.dumps(GOOD),
])
def test_extract_json_tolerates_fences_and_prose(text):
    assert extract_json(text) == GOOD


@pytest.mark.parametrize("text, reason", [
    ("", "empty reply"),
    ("   ", "empty reply"),
    ("I think it deserves 80.", "no JSON object"),
    ("[1, 2, 3]", "no JSON object"),
])
def test_extract_json_rejects(text, reason):
    with pytest.raises(InvalidReply, match=reason):
        extract_json(text)


def test_parse_judgement_ok_and_string_scores():
    j = parse_judgement(json.dumps(GOOD))
    assert j == Judgement(72.0, 64.5, "close", "mostly right")
    s = dict(GOOD, precision_assessment={"score": " 88 ", "reason": "x"})
    assert parse_judgement(json.dumps(s)).precision == 88.0


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d.pop("precision_assessment"), "missing key 'precision_assessment'"),
    (lambda d: d["similarity_assessment"].pop("score"), "missing key 'similarity_assessment.score'"),
    (lambda d: d["similarity_assessment"].update(score="high"), "not a number"),
    (lambda d: d["similarity_assessment"].update(score=True), "not a number"),
    (lambda d: d["similarity_assessment"].update(score=None), "not a number"),
    (lambda d: d["similarity_assessment"].update(score=101), "out of range"),
    (lambda d: d["precision_assessment"].update(score=0), "out of range"),
    (lambda d: d["precision_assessment"].update(score=-5), "out of range"),
])
def test_parse_judgement_invalid(mutate, reason):
    data = json.loads(json.dumps(GOOD))
    mutate(data)
    with pytest.raises(InvalidReply, match=reason):
        parse_judgement(json.dumps(data))


def test_parse_judgement_bounds_inclusive():
    data = json.loads(json.dumps(GOOD))
    data["similarity_assessment"]["score"] = 1
    data["precision_assessment"]["score"] = 100
    j = parse_judgement(json.dumps(data))
    assert (j.similarity, j.precision) == (1.0, 100.0)


def test_parse_synth_pairs_ok():
    text = "```json\n" + json.dumps({"contents": [{"instruction": " a ", "response": "b"},
                                                 {"instruction": "c", "response": "d"}]}) + "\n```"
    assert parse_synth_pairs(text) == [SynthPair("a", "b"), SynthPair("c", "d")]


@pytest.mark.parametrize("obj, reason", [
    ({"pairs": []}, "missing key 'contents'"),
    ({"contents": []}, "non-empty list"),
    ({"contents": "x"}, "non-empty list"),
    ({"contents": ["x"]}, r"contents\[0\] is not an object"),
    ({"contents": [{"instruction": "a"}]}, r"contents\[0\].response is missing or empty"),
    ({"contents": [{"instruction": "a", "response": "b"}, {"instruction": " ", "response": "b"}]},
     r"contents\[1\].instruction is missing or empty"),
])
def test_parse_synth_pairs_invalid(obj, reason):
    with pytest.raises(InvalidReply, match=reason):
        parse_synth_pairs(json.dumps(obj))
