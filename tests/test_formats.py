"""Common chat-data formats (src/llamaduo/formats.py) and the stages that read reference data.

Real `datasets` objects and real stage runs (the script as `__main__`, in-process); nothing is mocked."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from datasets import Dataset, load_from_disk

from llamaduo.errors import UsageError
from llamaduo.formats import check_format_args, detect_format, to_messages
from tests.inprocess import run_script

REPO = Path(__file__).resolve().parents[1]
CHAT = [{"role": "user", "content": "Add 1 and 2."}, {"role": "assistant", "content": "3"}]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("rows, fmt", [
    ([{"messages": CHAT, "id": 1}], "messages"),
    ([{"prompt": "Add 1 and 2.", "completion": "3", "id": 1}], "prompt_completion"),
    ([{"prompt": [CHAT[0]], "completion": [CHAT[1]], "id": 1}], "prompt_completion"),  # TRL conversational
    ([{"instruction": "Add 1 and 2.", "input": "", "output": "3", "id": 1}], "alpaca"),
    ([{"conversations": [{"from": "human", "value": "Add 1 and 2."}, {"from": "gpt", "value": "3"}], "id": 1}],
     "sharegpt"),
])
def test_each_format_becomes_the_same_messages(rows, fmt, caplog):
    with caplog.at_level(logging.INFO, logger="llamaduo.data"):
        out = to_messages(Dataset.from_list(rows), "data")
    assert out[0]["messages"] == CHAT and out[0]["id"] == 1  # other columns are kept
    assert not isinstance(out[0].get("prompt", ""), list)  # a `prompt` column, if kept, is the prompt text
    assert f"data: data format {fmt}" in caplog.text


def test_alpaca_input_system_and_sharegpt_system():
    alpaca = to_messages(Dataset.from_list([{"instruction": "Sum:", "input": "1 2", "output": "3", "system": "Be terse."}]), "d")
    assert alpaca[0]["messages"] == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Sum:\n\n1 2"},
                                     {"role": "assistant", "content": "3"}]
    share = to_messages(Dataset.from_list([{"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                                                              {"from": "gpt", "value": "A"}]}]), "d")
    assert [m["role"] for m in share[0]["messages"]] == ["system", "user", "assistant"]
    with pytest.raises(UsageError, match="unknown 'from': 'robot'"):
        to_messages(Dataset.from_list([{"conversations": [{"from": "robot", "value": "Q"}]}]), "d")


def test_ambiguous_missing_and_forced_formats():
    with pytest.raises(UsageError, match="ambiguous data format, candidates: messages, alpaca"):
        detect_format(["messages", "instruction", "output"], "data")
    assert detect_format(["messages", "instruction", "output"], "data", "alpaca") == "alpaca"
    assert detect_format(["prompt", "messages", "prompt_id"], "data") == "messages"  # our own outputs
    assert detect_format(["prompt", "task_id"], "data") == "prompt"  # test prompts without answers
    with pytest.raises(UsageError, match="no known data format in columns question, answer"):
        detect_format(["question", "answer"], "data")
    with pytest.raises(UsageError, match="data_format 'alpaca' needs column"):
        detect_format(["prompt"], "data", "alpaca")
    with pytest.raises(UsageError, match="has prompts but no answers"):
        to_messages(Dataset.from_list([{"prompt": "x"}]), "data", require_answer=True)


def test_column_map():
    ds = Dataset.from_list([{"question": "Add 1 and 2.", "answer": "3", "task_id": "t/0"}])
    out = to_messages(ds, "d", column_map={"prompt": "question", "completion": "answer"})
    assert out[0]["messages"] == CHAT and out[0]["task_id"] == "t/0" and out[0]["prompt"] == "Add 1 and 2."
    with pytest.raises(UsageError, match="column_map key 'question' is not one of"):
        check_format_args("auto", {"question": "prompt"})
    with pytest.raises(UsageError, match="data_format 'csv' is not one of"):
        check_format_args("csv", None)


# ------------------------------------------------------------------------ the stages


HUMANEVAL = [{"task_id": f"HumanEval/{i}", "prompt": f"def f{i}(x):\n    \"\"\"Return x plus {i}.\"\"\"\n",
              "canonical_solution": f"    return x + {i}\n", "test": f"assert f{i}(1) == {1 + i}", "entry_point": f"f{i}"}
             for i in range(6)]


def test_merge_keeps_humaneval_columns_and_reads_other_formats(tmp_path):
    """HumanEval-shaped original data (column-mapped) + ShareGPT synthetic data: test/entry_point survive."""
    first = tmp_path / "first"
    write_jsonl(first / "train_sft.jsonl", HUMANEVAL[:4])
    write_jsonl(first / "test_sft.jsonl", HUMANEVAL[4:])
    second = write_jsonl(tmp_path / "synth.jsonl", [
        {"conversations": [{"from": "human", "value": "Write g(x) returning 2x."}, {"from": "gpt", "value": "def g(x): return 2*x"}]}])
    proc = run_script(REPO / "dataset_merge.py", ["--first-ds-id", str(first), "--second-ds-id", second, "--result-ds-id",
                                                  str(tmp_path / "merged"), "--column-map",
                                                  '{"completion": "canonical_solution"}'], cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "data format prompt_completion" in proc.stderr and "data format sharegpt" in proc.stderr
    merged = load_from_disk(str(tmp_path / "merged"))
    test = merged["test_sft"]
    assert test["test"] == [r["test"] for r in HUMANEVAL[4:]] and test["entry_point"] == ["f4", "f5"]
    assert test[0]["messages"][1]["content"] == HUMANEVAL[4]["canonical_solution"]
    train = merged["train_sft"]
    assert len(train) == 5 and sorted(x for x in train["entry_point"] if x) == ["f0", "f1", "f2", "f3"]
    assert train["test"].count(None) == 1  # the synthetic row has no test


def test_merge_ambiguous_input_exits_2_before_writing(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [{"messages": CHAT, "instruction": "x", "output": "y"}])
    proc = run_script(REPO / "dataset_merge.py", ["--first-ds-id", first, "--second-ds-id", first,
                                                  "--first-ds-test-split", "", "--result-ds-id", str(tmp_path / "m")],
                      cwd=REPO)
    assert proc.returncode == 2 and "candidates: messages, alpaca" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists()


def test_finetune_data_reads_alpaca_and_conversational_prompt_completion(tmp_path):
    from llamaduo.pipeline.finetune_data import load_mixed

    a = tmp_path / "alpaca"
    write_jsonl(a / "train_sft.jsonl", [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(3)])
    b = tmp_path / "pc"
    write_jsonl(b / "train_sft.jsonl", [{"prompt": [{"role": "user", "content": "Hi"}],
                                         "completion": [{"role": "assistant", "content": "Hello"}]}])
    data = load_mixed({str(a): 1.0, str(b): 1.0}, ["train_sft"], seed=0, want_eval=False)
    chats = sorted(tuple((m["role"], m["content"]) for m in row) for row in data.train["messages"])
    assert chats == [(("user", "Hi"), ("assistant", "Hello"))] + [(("user", f"Say {i}."), ("assistant", str(i))) for i in range(3)]


def test_batch_inference_prompts_from_humaneval_shape(tmp_path):
    from llamaduo.inference.prompts import prompt_records

    ds = to_messages(Dataset.from_list(HUMANEVAL[:2]), "t", column_map={"completion": "canonical_solution"})
    records = prompt_records(ds)
    assert [r.instruction for r in records] == [HUMANEVAL[0]["prompt"], HUMANEVAL[1]["prompt"]]
    assert records[1].target == HUMANEVAL[1]["canonical_solution"]


def test_data_gen_seeds_from_alpaca(tmp_path):
    from llamaduo.pipeline.data_gen import DataGenArgs, load_seeds

    ref = write_jsonl(tmp_path / "ref.jsonl", [{"instruction": "Reverse a string.", "input": "abc", "output": "cba"}])
    seeds, train = load_seeds(DataGenArgs(reference_ds_id=ref, reference_ds_split="train_sft"))
    assert (seeds[0].instruction, seeds[0].response) == ("Reverse a string.\n\nabc", "cba")


def test_common_answer_names_next_to_prompt_need_no_column_map(caplog):
    with caplog.at_level(logging.INFO, logger="llamaduo.data"):
        out = to_messages(Dataset.from_list(HUMANEVAL[:1]), "he", require_answer=True)
    assert out[0]["messages"][1]["content"] == HUMANEVAL[0]["canonical_solution"]
    assert "column 'canonical_solution' read as the completion" in caplog.text
    assert out[0]["test"] == HUMANEVAL[0]["test"] and out[0]["entry_point"] == "f0"
    qa = to_messages(Dataset.from_list([{"prompt": "Q", "response": "A"}]), "qa")
    assert qa[0]["messages"] == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    # our own outputs (prompt + messages) are not touched
    ours = to_messages(Dataset.from_list([{"prompt": "Q", "messages": CHAT, "response": "x"}]), "ours")
    assert ours[0]["messages"] == CHAT and ours[0]["response"] == "x"
