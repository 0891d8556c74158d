"""No known secret in an output: masked in every text cell (nested ones too), masked in the
stage's own files, and refused (exit 1, naming the column or file, never the value) by the last
check before a local folder is published or a commit is pushed (the fake Hub seam)."""
from __future__ import annotations

import pytest
from datasets import Dataset, load_from_disk

from llamaduo import hub, leak_check, redact
from llamaduo.errors import RunFailed

KEY = "sk-canary-0123456789abcdef"
TOKEN = "hf_canaryTOKENvalue42"
OTHER = "custom-secret-value-99"


@pytest.fixture(autouse=True)
def secrets(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("MY_VENDOR_SECRET", OTHER)     # no provider declares it: matched by its name
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "falsefalse")  # TOKEN inside a word: not a secret
    monkeypatch.setattr(redact, "_REGISTERED", {})
    redact.register_secret("cfg-key-from-the-config", "service_llm_api_key")


def leaky_rows() -> Dataset:
    return Dataset.from_list([
        {"x": 1, "exec_reason": f"ValueError: {KEY}", "messages": [{"role": "user", "content": f"tok {TOKEN}"}],
         "note": "falsefalse stays"},
        {"x": 2, "exec_reason": "passed", "messages": [{"role": "user", "content": "cfg-key-from-the-config"}],
         "note": f"{OTHER}!"},
    ])


def every_byte(folder) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_known_secrets_cover_config_declared_and_credential_named_env_vars():
    found = redact.known_secrets()
    assert found[KEY] == "env OPENAI_API_KEY" and found[TOKEN] == "env HF_TOKEN"
    assert found[OTHER] == "env MY_VENDOR_SECRET" and found["cfg-key-from-the-config"] == "service_llm_api_key"
    assert "falsefalse" not in found
    assert redact.find_secret(f"x {OTHER} y") == "env MY_VENDOR_SECRET"
    assert redact.find_secret("nothing here") is None


def test_url_credentials_in_env_become_known_secrets(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "https://alice:pa55word-xyz@llm.example/v1?api_key=qk-123456789")
    found = redact.known_secrets()
    assert found["alice:pa55word-xyz"].startswith("credentials in the URL of env OPENAI_BASE_URL")
    assert "qk-123456789" in found
    assert redact.mask_secrets("echo pa55word alice:pa55word-xyz qk-123456789") == "echo pa55word *** ***"


def test_local_output_is_masked_everywhere(tmp_path):
    out = hub.save_output({"eval": leaky_rows()}, str(tmp_path / "out"), push=False, stage="test",
                          config={"k": 1}, extra_files=lambda d: (d / "report.md").write_text(f"row 0: {KEY}"))
    data = every_byte(out)
    for secret in (KEY, TOKEN, OTHER, "cfg-key-from-the-config"):
        assert secret.encode() not in data
    ds = load_from_disk(str(out))["eval"]
    assert ds[0]["exec_reason"] == "ValueError: ***" and ds[0]["messages"][0]["content"] == "tok ***"
    assert ds[0]["note"] == "falsefalse stays" and ds[1]["note"] == "***!" and ds[1]["exec_reason"] == "passed"
    assert (out / "report.md").read_text() == "row 0: ***"


def test_the_last_check_refuses_a_secret_it_cannot_mask(tmp_path, monkeypatch):
    """Rows already on disk (appended to) hold a value that became a secret later: the binary
    arrow files cannot be masked, so the write is refused, naming the file, never the value,
    and the existing output is left as it was."""
    out = tmp_path / "out"
    old = Dataset.from_list([{"x": 0, "text": "later-secret-value"}])
    hub.save_output({"eval": old}, str(out), push=False, stage="test", config={})
    before = every_byte(out)
    monkeypatch.setenv("ANOTHER_API_KEY", "later-secret-value")
    with pytest.raises(RunFailed) as err:
        hub.save_output({"eval": Dataset.from_list([{"x": 1, "text": "new"}])}, str(out), push=False, stage="test",
                        config={}, append=True)
    message = str(err.value)
    assert "refusing to write" in message and "holds a known secret (env ANOTHER_API_KEY)" in message
    assert "later-secret-value" not in message
    assert every_byte(out) == before


def test_a_secret_in_a_compressed_parquet_file_is_found(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [f"row {i} parquet-secret-1234 lorem ipsum dolor sit amet" for i in range(3000)]
    pq.write_table(pa.table({"text": rows}), tmp_path / "a.parquet", compression="gzip", write_statistics=False)
    assert b"parquet-secret-1234" not in (tmp_path / "a.parquet").read_bytes()  # the bytes do not show it
    monkeypatch.setenv("PARQUET_TOKEN", "parquet-secret-1234")
    with pytest.raises(RunFailed, match=r"a.parquet holds a known secret \(env PARQUET_TOKEN\)"):
        leak_check.secure_folder(tmp_path, "the output")


def test_pushed_rows_and_card_are_masked(tmp_path, fake_hub):
    hub.save_output({"eval": leaky_rows()}, "me/ds", push=True, stage="test", config={"url": f"http://u:{KEY}@h/"},
                    output_root=str(tmp_path))
    pushed = fake_hub.split_rows("me/ds", "eval")
    assert list(pushed["exec_reason"]) == ["ValueError: ***", "passed"]
    card = fake_hub.repos["me/ds"]["README.md"]
    card = card if isinstance(card, bytes) else card.encode()
    assert KEY.encode() not in card


def test_check_dataset_and_text_name_the_column_not_the_value():
    with pytest.raises(RunFailed, match=r"column 'exec_reason' holds a known secret \(env OPENAI_API_KEY\)") as err:
        leak_check.check_dataset(leaky_rows(), "split 'eval'")
    assert KEY not in str(err.value)
    with pytest.raises(RunFailed, match=r"the card: it holds a known secret \(env HF_TOKEN\)"):
        leak_check.check_text(f"token: {TOKEN}", "the card")
    leak_check.check_text("no secret", "the card")


def test_a_model_folder_holding_a_secret_is_not_pushed(tmp_path, fake_hub):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "training_args.bin").write_bytes(b"\x80\x04pickle" + TOKEN.encode())
    (folder / "checkpoint-1").mkdir()
    with pytest.raises(RunFailed, match=r"training_args.bin holds a known secret \(env HF_TOKEN\)"):
        hub.push_model_folder(folder, "me/model", "card")
    assert "create_commit" not in fake_hub.calls
    (folder / "training_args.bin").write_bytes(b"\x80\x04pickle")
    (folder / "checkpoint-1" / "x.bin").write_bytes(TOKEN.encode())  # not uploaded: not checked
    hub.push_model_folder(folder, "me/model", f"card {KEY}")
    assert "create_commit" in fake_hub.calls
