"""dataset_merge.py end to end, as a user runs it (a real subprocess: the full run and the plain
split run, whose output must carry no progress-bar noise), plus append, bad inputs and the
`added` count, run in-process as the script runs them (tests/inprocess.py: seconds less each)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from datasets import load_from_disk

from llamaduo.data import prompt_id_for
from tests.inprocess import run_stage


def pair(user: str, answer: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], **extra}


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture()
def datasets_dir(tmp_path):
    first = tmp_path / "first"
    write_jsonl(first / "train_sft.jsonl", [
        pair(f"task {i}", f"answer {i}", prompt=f"task {i}", prompt_id=prompt_id_for(f"task {i}"), category="coding")
        for i in range(6)])
    write_jsonl(first / "test_sft.jsonl", [pair("held out", "x", prompt="held out", category="coding",
                                                test="assert f() == 1", entry_point="f")])
    write_jsonl(tmp_path / "synth.jsonl", [
        pair("task 0", "answer 0", generators="gpt-4o", seed_prompts="task 0"),      # exact duplicate of first
        pair("  TASK 1 ", "Answer   1", generators="gpt-4o", seed_prompts="task 1"),  # duplicate after normalising
        pair("Held out", "y", generators="gpt-4o", seed_prompts="task 2"),            # test contamination
        pair("new task A", "new answer A", generators="gpt-4o", seed_prompts="task 3"),
        pair("new task B", "new answer B", generators="gpt-4o", seed_prompts="task 4"),
    ])
    return tmp_path


def run_merge(repo_root, *args):
    return subprocess.run([sys.executable, "dataset_merge.py", *args], cwd=repo_root,
                          capture_output=True, text=True)


def merge(repo_root, *args):
    """The stage's main in-process (exit code, stdout, stderr as the script gives them)."""
    return run_stage("dataset_merge", list(args), cwd=repo_root)


def test_merge_end_to_end(repo_root, datasets_dir):
    out = datasets_dir / "merged"
    cfg = datasets_dir / "merge.yaml"
    cfg.write_text(f"first_ds_id: {datasets_dir / 'first'}\nsecond_ds_id: {datasets_dir / 'synth.jsonl'}\n"
                   f"result_ds_id: {out}\n")
    proc = run_merge(repo_root, "--from-config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    dd = load_from_disk(str(out))
    train, test = dd["train_sft"], dd["test_sft"]
    assert train.column_names == ["generator", "prompt_id", "prompt", "seed_prompt", "messages", "category"]
    assert len(train) == 6 + 2 and len(test) == 1
    assert (test[0]["test"], test[0]["entry_point"]) == ("assert f() == 1", "f")  # kept for execution
    assert "test" not in train.column_names
    assert "held out" not in [p.lower() for p in train["prompt"]]
    synth = [r for r in train if r["generator"] == "gpt-4o"]
    assert [r["seed_prompt"] for r in synth] == ["task 3", "task 4"]  # plural spellings accepted
    assert synth[0]["prompt_id"] == prompt_id_for("new task A")
    assert {r["generator"] for r in train if r["prompt"].startswith("task")} == {None}  # null, not "[missing]"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exact_duplicates_dropped"] == 2 and summary["contaminated_dropped"] == 1
    assert summary["added"] == 2  # new task A and B: what the loop's stop rule reads
    assert summary["peak_rss_mb"] > 0
    assert "dropped 2 exact duplicate(s) and 1 test-contaminated" in proc.stdout


def test_merge_append_to_existing_result(repo_root, datasets_dir):
    out = datasets_dir / "merged"
    common = ["--first-ds-id", str(datasets_dir / "first"), "--second-ds-id", str(datasets_dir / "synth.jsonl"),
              "--result-ds-id", str(out)]
    assert merge(repo_root, *common).returncode == 0
    proc = merge(repo_root, *common, "--result-ds-train-append")
    assert proc.returncode == 0, proc.stderr
    assert len(load_from_disk(str(out))["train_sft"]) == 16 and len(load_from_disk(str(out))["test_sft"]) == 1


@pytest.mark.parametrize("extra,pattern", [
    (["--first-ds-train-split", "nope"], r"has no split .nope.; existing splits: test_sft, train_sft"),
    (["--first-ds-test-split", "validation"], r"has no split 'validation'; existing splits: test_sft, train_sft"),
    (["--result-ds-id", ""], r"result_ds_id is required"),
    (["--push-result-ds-to-hf-hub", "--result-ds-id", "me/merged"], r"HF_HUB_OFFLINE"),
    (["--first-ds-id", "does/not/exist.jsonl"], r"path not found"),
    (["--frist-ds-id", "x"], r"unknown flag '--frist-ds-id'; did you mean: first_ds_id"),
])
def test_merge_bad_inputs_exit_2(repo_root, datasets_dir, extra, pattern):
    import re

    base = ["--first-ds-id", str(datasets_dir / "first"), "--second-ds-id", str(datasets_dir / "synth.jsonl"),
            "--result-ds-id", str(datasets_dir / "m")]
    proc = merge(repo_root, *base, *extra)
    assert proc.returncode == 2, proc.stderr
    assert re.search(pattern, proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr


def test_merge_missing_messages_column_exit_2(repo_root, datasets_dir):
    write_jsonl(datasets_dir / "bad.jsonl", [{"prompt": "x", "label": "y"}])
    proc = merge(repo_root, "--first-ds-id", str(datasets_dir / "first"), "--second-ds-id",
                     str(datasets_dir / "bad.jsonl"), "--result-ds-id", str(datasets_dir / "m"))
    assert proc.returncode == 2
    assert "has prompts but no answers (columns: prompt, label); map the answer column with column_map" in proc.stderr


def test_optional_second_dataset_without_train_split(repo_root, datasets_dir):
    """data_gen may keep no pair in a round (only a `rejected` split): with second_ds_optional
    the merge carries on with the first dataset alone; without it, that is an error."""
    synth = datasets_dir / "synth_empty"
    write_jsonl(synth / "rejected.jsonl", [pair("bad", "x", reject_reason="invalid")])
    base = ["--first-ds-id", str(datasets_dir / "first"), "--second-ds-id", str(synth),
            "--result-ds-id", str(datasets_dir / "m")]
    strict = merge(repo_root, *base)
    assert strict.returncode == 2 and "has no split 'train_sft'" in strict.stderr
    lenient = merge(repo_root, *base, "--second-ds-optional")
    assert lenient.returncode == 0, lenient.stderr
    assert len(load_from_disk(str(datasets_dir / "m"))["train_sft"]) == 6
    assert json.loads((datasets_dir / "m" / "summary.json").read_text())["added"] == 0


def test_added_is_zero_when_every_second_row_is_already_known(repo_root, datasets_dir):
    """A round whose pairs all repeat earlier data adds nothing: `added` 0, not `second_train`."""
    dup = datasets_dir / "dup.jsonl"
    write_jsonl(dup, [pair("task 2", "answer 2"), pair(" Task 3", "ANSWER 3")])
    out = datasets_dir / "m2"
    proc = merge(repo_root, "--first-ds-id", str(datasets_dir / "first"), "--second-ds-id", str(dup),
                     "--result-ds-id", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["second_train"] == 2 and summary["added"] == 0 and summary["train"] == 6


def test_merge_plain_train_test_splits_without_flags(repo_root, tmp_path):
    """A plain HF dataset (train/test, no *_sft names) merges with no split flag, the log says
    which split was used, and the output opens with `load_dataset(folder)` as well as load_from_disk."""
    from datasets import load_dataset

    first = tmp_path / "plain"
    write_jsonl(first / "train.jsonl", [pair(f"task {i}", f"answer {i}") for i in range(4)])
    write_jsonl(first / "test.jsonl", [pair("held out", "x")])
    write_jsonl(tmp_path / "second" / "train.jsonl", [pair("new task", "new answer"), pair("held out", "y")])
    out = tmp_path / "merged"
    proc = run_merge(repo_root, "--first-ds-id", str(first), "--second-ds-id", str(tmp_path / "second"),
                     "--result-ds-id", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "has no split 'train_sft': using its 'train' split" in proc.stderr
    assert "has no split 'test_sft': using its 'test' split" in proc.stderr
    loaded = load_dataset(str(out))
    assert sorted(loaded) == ["test_sft", "train_sft"]
    assert len(loaded["train_sft"]) == 5 and len(loaded["test_sft"]) == 1  # "held out" dropped from train
    assert loaded["train_sft"]["prompt"] == load_from_disk(str(out))["train_sft"]["prompt"]
    assert loaded["train_sft"][0]["generator"] is None
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(out / "README.md").data
    assert card.size_categories == ["n<1K"] and card.task_categories == ["text-generation"]
    assert card.license == "unknown" and card.source_datasets == ["original"]  # local inputs, no Hub source
    assert "Saving the dataset" not in proc.stderr  # no datasets progress bars for a small write
    assert "Creating json from Arrow" not in proc.stderr
