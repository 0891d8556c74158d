"""llamaduo.data: every kind of dataset reference, and a clear error for each bad input."""
from __future__ import annotations

import json
import time

import pytest
from datasets import Dataset, DatasetDict

from llamaduo.data import canonical_synth_columns, load_split, normalize_text, prompt_id_for
from llamaduo.errors import UsageError

ROWS = [{"prompt": f"p{i}", "messages": [{"role": "user", "content": f"p{i}"},
                                         {"role": "assistant", "content": f"a{i}"}]} for i in range(4)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_save_to_disk_datasetdict(tmp_path):
    DatasetDict({"train_sft": Dataset.from_list(ROWS), "test_sft": Dataset.from_list(ROWS[:2])}).save_to_disk(
        str(tmp_path / "dd"))
    assert len(load_split(str(tmp_path / "dd"), "test_sft")) == 2


def test_save_to_disk_single_dataset_serves_any_split(tmp_path):
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert len(load_split(str(tmp_path / "ds"), "train_sft")) == 4


def test_folder_of_split_files(tmp_path):
    write_jsonl(tmp_path / "train_sft.jsonl", ROWS)
    Dataset.from_list(ROWS[:3]).to_parquet(str(tmp_path / "test_sft-00000-of-00001.parquet"))
    assert len(load_split(str(tmp_path), "train_sft")) == 4
    assert len(load_split(str(tmp_path), "test_sft")) == 3


@pytest.mark.parametrize("ext", ["jsonl", "json", "parquet", "csv"])
def test_single_file_formats(tmp_path, ext):
    ds = Dataset.from_list([{"prompt": r["prompt"], "x": 1} for r in ROWS])
    path = tmp_path / f"d.{ext}"
    {"jsonl": lambda: ds.to_json(str(path), lines=True), "json": lambda: ds.to_json(str(path), lines=True),
     "parquet": lambda: ds.to_parquet(str(path)), "csv": lambda: ds.to_csv(str(path), index=False)}[ext]()
    assert load_split(str(path), "train", required_columns=("prompt",))["prompt"] == ["p0", "p1", "p2", "p3"]


def test_glob(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS[:2])
    write_jsonl(tmp_path / "b.jsonl", ROWS[2:])
    assert len(load_split(str(tmp_path / "*.jsonl"), "train")) == 4


def test_missing_split_lists_existing(tmp_path):
    write_jsonl(tmp_path / "train_sft.jsonl", ROWS)
    write_jsonl(tmp_path / "test_sft.jsonl", ROWS)
    with pytest.raises(UsageError, match=r"no split 'validation'; existing splits: test_sft, train_sft"):
        load_split(str(tmp_path), "validation")


def test_missing_column_names_missing_and_present(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "x"}])
    with pytest.raises(UsageError, match=r"missing column\(s\) messages; present columns: prompt"):
        load_split(str(path), "train", required_columns=("prompt", "messages"))


def test_empty_dataset(tmp_path):
    write_jsonl(tmp_path / "train_sft.jsonl", ROWS)
    Dataset.from_list(ROWS).select([]).to_parquet(str(tmp_path / "test_sft.parquet"))
    with pytest.raises(UsageError, match="test_sft' is empty"):
        load_split(str(tmp_path), "test_sft")


def test_empty_saved_dataset(tmp_path):
    Dataset.from_dict({"prompt": []}).save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(UsageError, match="could not be read|is empty"):
        load_split(str(tmp_path / "empty"), "train")


def test_missing_local_path(tmp_path):
    with pytest.raises(UsageError, match="path not found"):
        load_split(str(tmp_path / "nope.jsonl"), "train")


def test_hub_id_offline_fails_fast():
    start = time.monotonic()
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE"):
        load_split("someone/some-dataset", "train_sft")
    assert time.monotonic() - start < 5  # not the 20-45 s stall of an offline Hub call


def test_unreadable_file(tmp_path):
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(UsageError, match="could not be read"):
        load_split(str(tmp_path / "bad.jsonl"), "train")


def test_text_helpers():
    assert normalize_text("  Hello \n World ") == "hello world"
    assert prompt_id_for("abc") == prompt_id_for(" abc\n") != prompt_id_for("abd")


def test_plural_synth_columns_are_renamed_unless_the_singular_exists():
    """One map for data_gen and dataset_merge: every plural spelling, `categories` included."""
    ds = Dataset.from_list([{"generators": "g", "prompt_ids": "1", "prompts": "p", "seed_prompts": "s",
                             "categories": "c", "messages": []}])
    assert canonical_synth_columns(ds).column_names == ["generator", "prompt_id", "prompt", "seed_prompt",
                                                        "category", "messages"]
    both = Dataset.from_list([{"prompt": "kept", "prompts": "left alone"}])
    assert canonical_synth_columns(both).column_names == ["prompt", "prompts"]
