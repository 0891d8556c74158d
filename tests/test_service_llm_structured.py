"""JSON extraction (pure functions: fast). The judge's reply schema: tests/test_judge_contract.py."""
from __future__ import annotations

import json

import pytest

from llamaduo.service_llm import InvalidReply, extract_json

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
