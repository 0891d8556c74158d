"""llamaduo.hub: local outputs, append/overwrite pushes against the fake Hub seam, cards, failures."""
from __future__ import annotations

import pytest
from datasets import Dataset, load_from_disk

from llamaduo import hub
from llamaduo.errors import RunFailed


def rows(start: int, n: int) -> Dataset:
    return Dataset.from_list([{"x": i, "text": f"row {i}"} for i in range(start, start + n)])


def save(splits, out, push=False, append=False, root="outputs", config=None):
    return hub.save_output(splits, out, push=push, append=append, stage="test", config=config or {"k": 1},
                           inputs={"src": {"id": "a", "sha": "b"}}, output_root=root)


def test_local_output_when_push_off_is_the_id(tmp_path):
    out = save({"train": rows(0, 3)}, str(tmp_path / "res"))
    assert out == tmp_path / "res"
    assert load_from_disk(str(out))["train"]["x"] == [0, 1, 2]
    assert (out / "train.jsonl").read_text().count("\n") == 3
    card = (out / "README.md").read_text()
    assert "stage" in card.lower() and "| train | 3 | overwrite |" in card


def test_local_append_and_overwrite_per_split(tmp_path):
    out = str(tmp_path / "res")
    save({"train": rows(0, 2), "test": rows(100, 1)}, out)
    save({"train": rows(2, 2), "test": rows(200, 1)}, out, append={"train": True, "test": False})
    dd = load_from_disk(out)
    assert dd["train"]["x"] == [0, 1, 2, 3]
    assert dd["test"]["x"] == [200]


def test_push_append_uploads_a_shard_and_never_downloads(tmp_path, fake_hub):
    save({"train": rows(0, 2)}, "me/ds", push=True, root=str(tmp_path))
    save({"train": rows(2, 3)}, "me/ds", push=True, append=True, root=str(tmp_path))
    assert sorted(fake_hub.split_rows("me/ds", "train")["x"]) == [0, 1, 2, 3, 4]
    assert len([p for p in fake_hub.repos["me/ds"] if p.startswith("data/train-")]) == 2
    assert set(fake_hub.calls) <= {"create_repo", "list_repo_files", "create_commit"}
    assert (tmp_path / "me/ds" / "dataset_dict.json").is_file()  # local copy under output_root/repo_id


def test_push_overwrite_replaces_only_that_split(tmp_path, fake_hub):
    save({"train": rows(0, 2), "test": rows(100, 2)}, "me/ds", push=True, root=str(tmp_path))
    save({"train": rows(10, 1)}, "me/ds", push=True, append=False, root=str(tmp_path))
    assert list(fake_hub.split_rows("me/ds", "train")["x"]) == [10]
    assert sorted(fake_hub.split_rows("me/ds", "test")["x"]) == [100, 101]
    card = fake_hub.repos["me/ds"]["README.md"].decode()
    assert "path: data/test-*" in card and "path: data/train-*" in card


def test_card_never_contains_a_secret(tmp_path, fake_hub, monkeypatch):
    monkeypatch.setenv("SERVICE_LLM_API_KEY", "sk-live-abcdef123456")
    save({"train": rows(0, 1)}, "me/ds", push=True, root=str(tmp_path),
         config={"note": "key is sk-live-abcdef123456"})
    assert b"sk-live-abcdef123456" not in fake_hub.repos["me/ds"]["README.md"]
    assert "sk-live-abcdef123456" not in (tmp_path / "me/ds" / "README.md").read_text()


def test_failed_push_keeps_local_output_and_names_it(tmp_path, fake_hub):
    fake_hub.fail_commits = True
    with pytest.raises(RunFailed, match=r"local output is intact at .*me/ds"):
        save({"train": rows(0, 2)}, "me/ds", push=True, root=str(tmp_path))
    assert load_from_disk(str(tmp_path / "me/ds"))["train"]["x"] == [0, 1]


def test_push_model_folder(tmp_path, fake_hub):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "adapter_config.json").write_text("{}")
    (tmp_path / "m" / "checkpoint-5").mkdir()
    (tmp_path / "m" / "checkpoint-5" / "x.bin").write_text("skip")
    hub.push_model_folder(tmp_path / "m", "me/model", "# card")
    assert sorted(fake_hub.repos["me/model"]) == ["README.md", "adapter_config.json"]


def test_push_offline_without_fake_is_a_usage_error():
    from llamaduo.errors import UsageError

    with pytest.raises(UsageError, match="HF_HUB_OFFLINE"):
        hub.check_push_possible(True, "x")


def test_push_checks_go_through_the_seam(fake_hub):
    """Reachability and the token are asked of the installed Hub client, fake or real: no
    production branch skips them for a fake."""
    from llamaduo.errors import UsageError

    hub.check_push_possible(True, "x")
    assert fake_hub.calls == ["check_reachable", "whoami"]
    fake_hub.token = None
    with pytest.raises(UsageError, match="needs a Hugging Face token"):
        hub.check_push_possible(True, "x")
    fake_hub.reachable = False
    with pytest.raises(UsageError, match="not reachable"):
        hub.ensure_hub_reachable("dataset 'me/ds'")
    fake_hub.calls.clear()
    hub.check_push_possible(False, "x")  # no push: nothing asked
    assert fake_hub.calls == []


def test_the_real_client_probes_its_own_endpoint(monkeypatch):
    """HubClient's probe: offline mode refuses first; otherwise it connects to the endpoint's
    host (HF_ENDPOINT mirrors included), here a closed local port."""
    import socket

    from llamaduo.errors import UsageError

    with pytest.raises(UsageError, match="HF_HUB_OFFLINE"):
        hub.HubClient().check_reachable("x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: the connection is refused at once
        with pytest.raises(UsageError, match=r"Hub \(127\.0\.0\.1\) is not reachable"):
            hub.HubClient(endpoint=f"http://127.0.0.1:{port}").check_reachable("x")
