"""finetune.py's `truncation` key: conversations longer than max_length are counted with the
training tokenizer and chat template, then dropped (default), refused (exit 2 before any model
load) or kept; the counts land in finetune_summary.json. On the tiny random model."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from llamaduo.errors import UsageError
from tests.inprocess import run_stage
from tests.test_finetune import _argv, _finetune, _rows, _write_jsonl, broken_model_dir  # noqa: F401

MAX_LENGTH = 128


def _long_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        reply = "```python\n" + "".join(f"x{k} = {i} + {k}\n" for k in range(40 + 10 * i)) + "```"
        messages = [{"role": "user", "content": f"Write {40 + 10 * i} assignments."},
                    {"role": "assistant", "content": reply}]
        rows.append({"prompt": messages[0]["content"], "messages": messages, "category": "coding"})
    return rows


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 short conversations and 2 that do not fit in MAX_LENGTH tokens."""
    folder = tmp_path_factory.mktemp("mixed-data")
    _write_jsonl(folder / "train_sft.jsonl", _rows(8) + _long_rows(2))
    _write_jsonl(folder / "test_sft.jsonl", _rows(2) + _long_rows(1))
    return folder


def _lengths(model_dir: Path, data: Path, split: str = "train_sft") -> list[int]:
    """Token counts the way the trainer sees them: the same tokenizer's own chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    rows = [json.loads(line) for line in (data / f"{split}.jsonl").read_text().splitlines()]
    return [len(tok.apply_chat_template(r["messages"], tokenize=True)["input_ids"]) for r in rows]


def test_the_data_really_has_cut_and_uncut_conversations(tiny_model_dir: Path, mixed_data: Path) -> None:
    lengths = _lengths(tiny_model_dir, mixed_data)
    assert sum(n > MAX_LENGTH for n in lengths) == 2 and max(lengths[:8]) <= MAX_LENGTH


def test_error_policy_exits_2_before_model_load_naming_count_longest_and_a_fix(
        broken_model_dir: Path, tiny_model_dir: Path, mixed_data: Path, tmp_path: Path) -> None:  # noqa: F811
    longest = max(_lengths(tiny_model_dir, mixed_data))
    fix = math.ceil(longest / 64) * 64
    with pytest.raises(UsageError, match=rf"training data: 2 of 10 conversations \(20.0%\) are longer than "
                                         rf"max_length {MAX_LENGTH} tokens \(longest {longest}\).*at least {fix}"):
        _finetune(_argv(broken_model_dir, mixed_data, tmp_path / "out", "--max-steps", "1",
                        "--truncation", "error"))


def test_error_policy_cli_exit_code(repo_root: Path, tiny_model_dir: Path, mixed_data: Path, tmp_path: Path) -> None:
    """The exit status and message as finetune.py reports them (main under run_main, in-process)."""
    proc = run_stage("finetune", [*_argv(tiny_model_dir, mixed_data, tmp_path / "out"), "--truncation", "error"],
                     cwd=repo_root)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "2 of 10 conversations (20.0%)" in proc.stderr and "Traceback" not in proc.stderr


def test_drop_when_everything_is_cut_exits_2(broken_model_dir: Path, mixed_data: Path,  # noqa: F811
                                             tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="10 of 10 conversations.*nothing to train on"):
        _finetune(_argv(broken_model_dir, mixed_data, tmp_path / "out", "--max-steps", "1", "--max-length", "8"))


@pytest.mark.parametrize("layout", [[], ["--padding-free"], ["--packing"]], ids=["padded", "padding-free", "packing"])
def test_drop_is_the_default_and_trains_only_conversations_that_fit(
        layout: list[str], tiny_model_dir: Path, mixed_data: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="llamaduo.finetune"):
        assert _finetune(_argv(tiny_model_dir, mixed_data, out, "--max-steps", "1", *layout)) == 0
    summary = json.loads((out / "finetune_summary.json").read_text())
    lengths = _lengths(tiny_model_dir, mixed_data)
    assert summary["truncation"] == {"policy": "drop", "max_length": MAX_LENGTH, "rows": 10, "cut": 2,
                                     "share": 0.2, "longest": max(lengths), "dropped": 2}
    # the trained tokens are exactly those of the 8 conversations that fit
    assert summary["train_tokens"] == sum(n for n in lengths if n <= MAX_LENGTH)
    assert "2 of 10 conversations (20.0%) are longer than max_length 128" in caplog.text
    assert "truncation: drop" in caplog.text


def test_keep_trains_on_cut_conversations_with_a_warning(tiny_model_dir: Path, mixed_data: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="llamaduo.finetune"):
        assert _finetune(_argv(tiny_model_dir, mixed_data, out, "--max-steps", "1", "--padding-free",
                               "--truncation", "keep", "--eval-strategy", "steps", "--eval-steps", "1")) == 0
    summary = json.loads((out / "finetune_summary.json").read_text())
    t = summary["truncation"]
    assert (t["policy"], t["rows"], t["cut"], t["dropped"]) == ("keep", 10, 2, 0)
    assert (t["eval"]["rows"], t["eval"]["cut"], t["eval"]["dropped"]) == (3, 1, 0)
    # padding-free without packing: cut here, to max_length, as TRL would
    assert summary["train_tokens"] == sum(min(n, MAX_LENGTH) for n in _lengths(tiny_model_dir, mixed_data))
    assert "truncation: keep" in caplog.text


def test_no_max_length_cuts_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    from datasets import Dataset

    from llamaduo.pipeline.finetune_truncation import apply_truncation_policy

    ds = Dataset.from_dict({"input_ids": [[1] * 5, [1] * 300], "labels": [[1] * 5, [1] * 300]})
    kept, count = apply_truncation_policy(ds, None, "error", "training data")
    assert len(kept) == 2 and (count.cut, count.longest, count.share) == (0, 300, 0.0)
    kept, count = apply_truncation_policy(ds, 300, "error", "training data")  # exactly max_length fits
    assert len(kept) == 2 and count.cut == 0
