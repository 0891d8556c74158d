"""The mechanisms behind issue 23's bad-input classes, each on its own: value checks at load
(llamaduo.value_checks through config.parse_config), real-path output checks, URL masking,
invalid chat rows (and `drop_invalid_rows`), a full disk, and the loop's MAX_ROUNDS."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
from datasets import Dataset

from llamaduo.config import parse_config
from llamaduo.data import load_split
from llamaduo.errors import UsageError
from llamaduo.outputs import check_not_input, check_output_path
from llamaduo.redact import redact
from llamaduo.validation import check_sft_columns
from llamaduo.value_checks import split_name_problem
from tests.inprocess import run_script
from tests.servers.bad_inputs import sft_folder, sft_rows, stage_env, write_jsonl

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    name: str = "x"
    maybe: Optional[str] = None
    ratio: float = 0.5
    count: int = field(default=3, metadata={"min": 1, "max": 10, "help": "a bounded count"})
    tags: list[str] = field(default_factory=list)
    table: Optional[dict] = None
    out_split: str = "train"
    in_split: Optional[str] = None


def parse(*argv: str, yaml_text: str | None = None, tmp_path: Path | None = None) -> Args:
    if yaml_text is not None:
        (tmp_path / "c.yaml").write_text(yaml_text)
        argv = ("--from-config", str(tmp_path / "c.yaml"), *argv)
    return parse_config(Args, argv=list(argv))[0]


@pytest.mark.parametrize("argv,yaml_text,message", [
    (["--ratio", "nan"], None, "'ratio' must be a finite number"),
    (["--ratio=-inf"], None, "'ratio' must be a finite number"),
    ([], "ratio: .inf\n", "'ratio' must be a finite number"),
    ([], "table: {a: .nan}\n", "'table' must be a finite number"),
    ([], "tags: [a, \"b\\0c\"]\n", "'tags' must not contain a NUL byte"),
    ([], "name: [a, b]\n", "'name' expects a string, got a list"),
    ([], "maybe: {a: 1}\n", "'maybe' expects a string, got a mapping"),
    (["--count", "0"], None, "'count' must be within 1-10, got 0"),
    (["--count", "11"], None, "'count' must be within 1-10, got 11"),
    (["--count", "99999999999999999999"], None, "'count' is too large"),
    (["--out_split", "../x"], None, "'out_split' must be a plain split name"),
    (["--out_split", ""], None, "'out_split' must not be empty"),
    ([], "out_split: [train]\n", "'out_split' expects a string, got a list"),
    ([], "out_split: \"tr\\0ain\"\n", "'out_split' must not contain a NUL byte"),
])
def test_every_field_is_checked_at_load(tmp_path, argv, yaml_text, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        parse(*argv, yaml_text=yaml_text, tmp_path=tmp_path)


def test_good_values_still_load_and_optional_splits_may_be_empty(tmp_path):
    args = parse("--ratio", "1e-3", "--count", "10", "--in_split", "", "--out_split", "test_sft.v2-a",
                 yaml_text="tags: [a, b]\ntable: {a: 1.5}\n", tmp_path=tmp_path)
    assert (args.ratio, args.count, args.in_split, args.out_split) == (1e-3, 10, "", "test_sft.v2-a")


@pytest.mark.parametrize("name", ["a/b", "a\\b", "..", "../x", "x/..", ".hidden", "-x", "a b", "a\0b", "é" * 3])
def test_split_names_must_be_plain(name):
    assert split_name_problem(name)


def test_the_bounds_never_reach_argparse_and_help_still_works(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(Args, argv=["--help"])
    assert exc.value.code == 0 and "a bounded count" in capsys.readouterr().out


# ----------------------------------------------------------------------------- real paths


def test_output_is_compared_with_inputs_by_real_path(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.jsonl").write_text("{}\n")
    (tmp_path / "alias").symlink_to(data)
    monkeypatch.chdir(tmp_path)
    for out in ["./data/../data", "data/", "alias", str(data / "sub" / "out"), str(tmp_path / "alias" / ".")]:
        with pytest.raises(UsageError, match="would overwrite the input"):
            check_not_input(Path(out), out, "eval_ds_id", {"lm_response_ds_id": "./data"}, overwrite_input=False)
    check_not_input(Path("elsewhere"), "elsewhere", "eval_ds_id", {"lm_response_ds_id": "./data"}, False)
    with pytest.raises(UsageError) as err:  # a stage without an overwrite key does not offer one
        check_not_input(Path("data"), "data", "output_dir", {"d": "data"}, False, overwrite_key=None)
    assert "overwrite_input" not in str(err.value)


def test_a_dangling_symlink_output_is_refused(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    for out in (tmp_path / "link", tmp_path / "link" / "eval"):
        with pytest.raises(UsageError, match="dangling symlink"):
            check_output_path(out, "eval_ds_id")


# ----------------------------------------------------------------------------- URL masking


@pytest.mark.parametrize("url,secrets,kept", [
    ("https://h/v1?api-version=2024-02-01&code=S3cr3tA", ["S3cr3tA"], ["api-version=2024-02-01"]),
    ("https://h/v1#access_token=S3cr3tB&x=1", ["S3cr3tB"], ["https://h/v1#"]),
    ("https://u:S3cr3tC@h/v1?model=gpt-4o&hmac=S3cr3tD", ["S3cr3tC", "S3cr3tD"], ["model=gpt-4o"]),
    ("https://acct.blob.core.windows.net/c?sv=2022&se=2030&sig=S3cr3tE", ["S3cr3tE", "2030"], ["sv=***"]),
    ("http://127.0.0.1:9/v1?S3cr3tF", ["S3cr3tF"], ["http://127.0.0.1:9/v1?"]),
    ("'base_url': 'https://h/x?X-Goog-Signature=S3cr3tG&alt=json'", ["S3cr3tG"], ["alt=json'"]),
])
def test_url_masking_keeps_only_harmless_query_values(url, secrets, kept):
    masked = redact(url)
    assert not [s for s in secrets if s in masked], masked
    assert all(k in masked for k in kept), masked


def test_a_url_secret_never_reaches_the_printed_config(tmp_path):
    proc = run_script(REPO / "evaluation.py", ["--print-config", "--service_llm_base_url",
                                               "https://h/v1?api-version=1&tenant_key=S3cr3tH#id_token=S3cr3tI"],
                      cwd=REPO, env=stage_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "S3cr3t" not in proc.stdout + proc.stderr and "api-version=1" in proc.stdout


# ----------------------------------------------------------------------------- chat rows


def _rows(messages) -> Dataset:
    rows = sft_rows(3)
    rows[1]["messages"] = messages
    return Dataset.from_list(rows)


@pytest.mark.parametrize("messages,message", [
    ([], "row 1 column 'messages' is an empty list"),
    ([{"role": "user"}, {"role": "assistant", "content": "a"}], "row 1 column 'messages' has a message without"),
    ([{"role": "tool", "content": "x"}], "row 1 column 'messages' has a message with the unknown role 'tool'"),
    ([{"role": "user", "content": None}], "has a message without 'content'"),
])
def test_invalid_chat_rows_are_named_or_dropped_and_counted(messages, message, caplog):
    with pytest.raises(UsageError, match=message):
        check_sft_columns(_rows(messages), "data")
    kept = check_sft_columns(_rows(messages), "data", drop_invalid=True)
    assert len(kept) == 2 and [r["prompt_id"] for r in kept] == ["train0", "train2"]
    assert "dropped 1 invalid row(s) of 3" in caplog.text


def test_valid_rows_pass_on_the_arrow_fast_path():
    ds = Dataset.from_list(sft_rows(5))
    assert check_sft_columns(ds, "data") is ds  # nothing dropped, nothing copied


def test_merge_drops_invalid_rows_when_asked(tmp_path):
    """dataset_merge run for real (the script as `__main__`, in this process): with
    drop_invalid_rows the bad row is gone from the result."""
    first = sft_folder(tmp_path / "first")
    rows = sft_rows(4)
    rows[2]["messages"] = [{"role": "robot", "content": "beep"}]
    write_jsonl(first / "train_sft.jsonl", rows)
    second = write_jsonl(tmp_path / "synth.jsonl", sft_rows(2, "synth"))
    argv = ["--first_ds_id", str(first), "--second_ds_id", str(second), "--result_ds_id", str(tmp_path / "merged")]
    refused = run_script(REPO / "dataset_merge.py", argv, cwd=REPO, env=stage_env(tmp_path))
    assert refused.returncode == 2 and "unknown role 'robot'" in refused.stderr
    assert not (tmp_path / "merged").exists()
    done = run_script(REPO / "dataset_merge.py", argv + ["--drop_invalid_rows"], cwd=REPO,
                      env={**stage_env(tmp_path), "LLAMADUO_LOG_LEVEL": "INFO"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dropped 1 invalid row(s) of 4" in done.stderr
    train = load_split(str(tmp_path / "merged"), "train_sft")
    assert len(train) == 3 + 2 and "train2" not in set(train["prompt_id"])


# ----------------------------------------------------------------------------- a full disk


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_a_full_disk_is_one_line_and_exit_1(tmp_path):
    """A real full disk: a 20 kB tmpfs mounted in a private user+mount namespace."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("user namespaces are not available here")
    first = sft_folder(tmp_path / "first")
    second = write_jsonl(tmp_path / "synth.jsonl", sft_rows(300, "synth"))
    (tmp_path / "full").mkdir()
    stage = (f"{sys.executable} -m llamaduo dataset_merge --first_ds_id {first} --second_ds_id {second} "
             f"--result_ds_id {tmp_path / 'full' / 'merged'}")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=20k tmpfs {tmp_path / 'full'} && "
                           f"{stage}; echo rc=$?; ls -A {tmp_path / 'full'}"], cwd=REPO, env=stage_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "rc=1" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert len(errors) == 1 and "no space left" in errors[0] and "Traceback" not in proc.stderr
    assert proc.stdout.split("rc=1")[1].strip() == ""  # no staging folder or lock file left behind


# ----------------------------------------------------------------------------- the loop's counts


@pytest.mark.parametrize("value", ["99999999999999999999", "0", "10000", "1e3", "-1", " 2"])
def test_max_rounds_is_a_bounded_integer(tmp_path, value):
    env = {**os.environ, "MAX_ROUNDS": value, "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", str(REPO / "src/llamaduo/loop/llamaduo.sh"), "--check"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "MAX_ROUNDS must be an integer within 1-9999" in proc.stderr
    assert not (tmp_path / "out").exists()
