"""The demo datasets: data/demo_tickets (the loop demo: support tickets, a small seed split and a
held-out test split from phrasings the seed set and the stand-in teacher never use) and data/demo
(coding tasks with unit tests); both present, in the reference schema, exactly the builder's
output, with no test prompt leaking from the train split."""
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


# ---------------------------------------------------------------------------- the loop demo's tickets
from llamaduo.loop import demo_tickets  # noqa: E402

TICKETS = REPO / "data" / "demo_tickets"


@pytest.mark.parametrize("split, size", [("train_sft", demo_tickets.SEED_ROWS), ("test_sft", demo_tickets.TEST_ROWS)])
def test_ticket_splits_load_with_the_reference_schema_and_balanced_labels(split, size):
    ds = load_split(str(TICKETS), split, required_columns=REFERENCE_COLUMNS)
    assert len(ds) == size
    labels = []
    for row in ds:
        assert row["prompt_id"] == prompt_id_for(row["prompt"]) and row["category"] == demo_tickets.CATEGORY
        user, assistant = row["messages"]
        assert user == {"role": "user", "content": row["prompt"]}
        assert row["prompt"].startswith(demo_tickets.INSTRUCTION_HEAD)
        assert assistant["role"] == "assistant" and assistant["content"] in demo_tickets.LABELS
        labels.append(assistant["content"])
    counts = [labels.count(lab) for lab in demo_tickets.LABELS]
    assert max(counts) - min(counts) <= 1


def test_test_tickets_use_only_phrasings_the_seed_set_and_teacher_never_use():
    """Held out for real: each test ticket matches a test template of its own label and no
    training template; each seed ticket the other way round. The check can fail: a training
    ticket is recognised as one."""
    for split, own, other in (("test_sft", demo_tickets.TEST_TEMPLATES, demo_tickets.TRAIN_TEMPLATES),
                              ("train_sft", demo_tickets.TRAIN_TEMPLATES, demo_tickets.TEST_TEMPLATES)):
        for line in (TICKETS / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            message = demo_tickets.message_of(row["prompt"])
            assert demo_tickets.template_labels(message, own) == {row["messages"][1]["content"]}, message
            assert demo_tickets.template_labels(message, other) == set(), message
    import random
    drawn = demo_tickets.make_message("bug", random.Random(1), demo_tickets.TRAIN_TEMPLATES)
    assert demo_tickets.template_labels(drawn, demo_tickets.TRAIN_TEMPLATES) == {"bug"}


def test_no_test_ticket_near_a_seed_ticket():
    seed = [demo_tickets.message_of(p.instruction) for p in demo_tickets.seed_pairs()]
    test = [demo_tickets.message_of(p.instruction) for p in demo_tickets.test_pairs()]
    assert len(set(seed + test)) == len(seed + test)
    assert build_demo.near_duplicates(seed, test) == []
