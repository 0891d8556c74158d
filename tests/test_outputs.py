"""Fast in-process checks of the pieces behind issue 14: the output folder (lock, atomic
replacement, repair after an interrupted swap, input guard), URL masking, strict YAML, and
the ledger's sidecar import."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llamaduo.errors import UsageError
from llamaduo.outputs import OutputLock, check_not_input, staged_output
from llamaduo.redact import redact
from llamaduo.yaml_strict import load_yaml_strict


def test_staged_output_replaces_the_folder_and_keeps_what_it_did_not_rewrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("old")
    (out / "service_llm_ledger.sqlite").write_text("ledger")
    (out / "partial").mkdir()
    (out / "partial" / "rank000.jsonl").write_text("p")
    with staged_output(out) as staging:
        (staging / "summary.json").write_text("new")
        assert (out / "summary.json").read_text() == "old"  # nothing visible before the swap
    assert (out / "summary.json").read_text() == "new"
    assert (out / "service_llm_ledger.sqlite").read_text() == "ledger"
    assert (out / "partial" / "rank000.jsonl").read_text() == "p"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left behind


def test_a_failed_write_leaves_the_old_folder_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_output(out) as staging:
            (staging / "a").write_text("half")
            raise RuntimeError("killed")
    assert (out / "a").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_lock_repairs_an_interrupted_two_rename_swap(tmp_path):
    """Where renameat2 is missing, a kill between the two renames leaves `.out.old-*` and no
    `out`: the next run's lock puts the old folder back and removes unfinished staging."""
    aside = tmp_path / ".out.old-123"
    aside.mkdir()
    (aside / "summary.json").write_text("complete")
    (tmp_path / ".out.tmp-456").mkdir()
    with OutputLock(tmp_path / "out", "out"):
        assert (tmp_path / "out" / "summary.json").read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["out"]


@pytest.mark.parametrize("inputs,output", [
    ({"lm_response_ds_id": "{d}/resp"}, "{d}/resp"),            # same folder
    ({"lm_response_ds_id": "{d}/resp/batch.jsonl"}, "{d}/resp"),  # an input file inside the output
    ({"first_ds_id": "{d}/resp/*.jsonl"}, "{d}/resp"),           # a glob matching inside it
    ({"first_ds_id": "org/data"}, "org/data"),                   # the same Hub id
])
def test_an_output_that_is_an_input_is_refused_unless_overwrite_input(tmp_path, inputs, output):
    (tmp_path / "resp").mkdir()
    (tmp_path / "resp" / "batch.jsonl").write_text("{}\n")
    inputs = {k: v.format(d=tmp_path) for k, v in inputs.items()}
    output = output.format(d=tmp_path)
    with pytest.raises(UsageError, match="would overwrite the input"):
        check_not_input(Path(output), output, "eval_ds_id", inputs, overwrite_input=False)
    check_not_input(Path(output), output, "eval_ds_id", inputs, overwrite_input=True)
    check_not_input(tmp_path / "elsewhere", str(tmp_path / "elsewhere"), "eval_ds_id", inputs, False)


@pytest.mark.parametrize("text,secret", [
    ("http://user:pa55@host:8000/v1", "pa55"),
    ("https://tok-abcdef@api.example.com/v1", "tok-abcdef"),
    ("https://h/v1?api_key=k-123&model=x", "k-123"),
    ("https://h/x?X-Amz-Signature=s1g&X-Amz-Credential=cred", "s1g"),
    ("https://h/x?access_token=t0k#frag", "t0k"),
    ("wss://u:p4ss@h/ws?sig=abc", "p4ss"),
])
def test_redact_masks_url_credentials(text, secret):
    masked = redact(text)
    assert secret not in masked and "***" in masked


def test_redact_leaves_ordinary_text_and_masks_key_env_values(monkeypatch):
    plain = "max_new_tokens=5 keyboard=3 http://127.0.0.1:8000/v1?model=gpt-4o"
    assert redact(plain) == plain
    monkeypatch.setenv("SERVICE_LLM_API_KEY", "sk-live-123456")
    assert redact("key sk-live-123456 used") == "key *** used"


def test_strict_yaml_names_a_repeated_key_and_refuses_other_encodings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: 1\nnested:\n  b: 2\n  b: 3\n")
    with pytest.raises(UsageError, match=r"key 'b' appears twice with different values \(lines 3 and 4\)"):
        load_yaml_strict(path)
    # the same value twice (the original LlamaDuo's synth_data_gen.yaml does it) loads, with a warning
    path.write_text("a: 1\nnested:\n  b: 2\n  b: 2\n")
    assert load_yaml_strict(path) == {"a": 1, "nested": {"b": 2}}
    path.write_bytes("a: 1\n".encode("utf-16"))
    with pytest.raises(UsageError, match="not UTF-8 text .it looks like UTF-16."):
        load_yaml_strict(path)
    path.write_text("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n")  # merge keys are not duplicates
    assert load_yaml_strict(path)["other"] == {"x": 1, "y": 2}


def test_a_sidecar_is_imported_by_the_next_ledger_on_the_same_path(tmp_path, monkeypatch):
    from llamaduo.service_llm import sidecar
    from llamaduo.service_llm.ledger import Ledger
    from llamaduo.service_llm.records import Completion

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    first = Ledger(tmp_path / "a" / "ledger.sqlite")
    first.put("k1", Completion("t", 1, 2, "m", "stop", 0.1, 0.5), provider="openai", sample_index=0,
              messages=[{"role": "user", "content": "q"}])
    rows = first.paid_rows()
    first.close()
    os.remove(tmp_path / "a" / "ledger.sqlite")
    (tmp_path / "a").rmdir()  # the folder is gone: the sidecar goes to the temp folder
    where = sidecar.save(tmp_path / "a" / "ledger.sqlite", rows)
    assert where.parent == tmp_path / "tmp" and json.loads(where.read_text())["key"] == "k1"
    again = Ledger(tmp_path / "a" / "ledger.sqlite")
    assert again.get("k1").text == "t" and again.get("k1").cost_usd == 0.5
    assert not where.exists()
