"""The demo dataset (data/demo) the loop runs on: present, in the reference schema, exactly the
builder's output, and with no test prompt leaking from the train split."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llamaduo.data import REFERENCE_COLUMNS, load_split, normalize_text, prompt_id_for

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
sys.path.insert(0, str(REPO / "data"))
import build_demo  # noqa: E402  (data/ is not a package; the builder is a plain script)


@pytest.mark.parametrize("split, minimum", [("train_sft", 120), ("test_sft", 30)])
def test_splits_load_with_the_reference_schema(split, minimum):
    ds = load_split(str(DEMO), split, required_columns=REFERENCE_COLUMNS)
    assert len(ds) >= minimum
    for row in ds:
        assert row["prompt_id"] == prompt_id_for(row["prompt"])
        assert row["category"] == "coding"
        user, assistant = row["messages"]
        assert user == {"role": "user", "content": row["prompt"]}
        assert assistant["role"] == "assistant"
        # the one consistent answer style a 135M model can learn: a fenced block, one sentence
        head, code, tail = assistant["content"].split("```")
        assert head == "" and code.startswith("python\n") and tail.startswith("\nThis function ")
        assert 2 <= len(code.strip().splitlines()) - 1 <= 6
        # every task carries its unit test for execution-based evaluation
        assert "assert " in row["test"] and f"def {row['entry_point']}(" in code


def test_files_are_exactly_the_builders_output():
    proc = subprocess.run([sys.executable, str(REPO / "data" / "build_demo.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_no_duplicates_and_no_test_prompt_near_a_train_prompt():
    rows = {s: [json.loads(line) for line in (DEMO / f"{s}.jsonl").read_text().splitlines()]
            for s in ("train_sft", "test_sft")}
    train = [r["prompt"] for r in rows["train_sft"]]
    test = [r["prompt"] for r in rows["test_sft"]]
    normalized = [normalize_text(p) for p in train + test]
    assert len(set(normalized)) == len(normalized)
    assert build_demo.near_duplicates(train, test) == []


def test_near_duplicate_check_catches_a_planted_paraphrase():
    """The check above must be able to fail: a light edit of a train prompt is caught."""
    train = ["Write a Python function that returns the sum of a list of numbers."]
    planted = ["Write a Python function that returns the sum of a list of integers."]
    assert build_demo.near_duplicates(train, planted)
    assert build_demo.near_duplicates(train, ["Write a Python function that reverses a string."]) == []


def test_every_answer_runs_and_passes_its_check():
    tasks = build_demo.parse_tasks(build_demo.TASKS)
    assert len(tasks) >= 150
    build_demo.verify_tasks(tasks)  # raises on a wrong answer
    wrong = build_demo.Task(prompt="p", code="def f(x):\n    return x + 1", sentence="s", check="f(1) == 3")
    with pytest.raises(ValueError, match=r"check failed: f\(1\) == 3 \(AssertionError\)"):
        build_demo.verify_task(wrong)
    endless = build_demo.Task(prompt="p", code="def f(x):\n    return f(x)", sentence="s", check="f(1) == 2")
    with pytest.raises(ValueError, match="RecursionError"):
        build_demo.verify_task(endless)
