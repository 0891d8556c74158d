"""collect.py against the real local protocol server: requests counted, a rerun sends none, a
SIGKILL mid-run then a rerun loses nothing; inputs (prompt lists, answered logs, a Batch API
pair), duplicates, the seeded stratified split and exit-2 checks before any request."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from datasets import load_from_disk

from llamaduo.errors import UsageError
from llamaduo.pipeline import collect
from llamaduo.splits import stratified_split, rows_for_test
from tests.inprocess import run_script
from tests.servers.process import kill_when_accepted
from tests.servers.protocol_server import ProtocolServer

TOPICS = ["sorting", "graphs", "strings", "hashing", "recursion", "parsing"]


def prompt(i: int) -> str:
    return f"Question {i}: explain {TOPICS[i % 6]} with example number {i * 7} in two sentences."


def mixed_rows(n: int = 30) -> list[dict]:
    """n distinct prompts, 2 duplicates of them (case and spacing changed), 4 answered logs."""
    rows = [{"prompt": prompt(i)} for i in range(n)]
    rows += [{"prompt": prompt(3).upper()}, {"prompt": "  " + prompt(5) + "  "}]
    rows += [{"messages": [{"role": "user", "content": f"Logged question {i} about {TOPICS[i]}?"},
                           {"role": "assistant", "content": f"Logged answer {i}."}]} for i in range(4)]
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stage_env(repo_root: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo_root / "src"), str(repo_root)]))


def argv(data: Path | str, out: Path, url: str, *extra: str) -> list[str]:
    return ["--prompts-ds-id", str(data), "--reference-ds-id", str(out), "--service-llm-provider", "openai",
            "--service-model-name", "M", "--service-llm-base-url", url, "--rate-limit-per-minute", "0", *extra]


def splits(out: Path) -> tuple[list[dict], list[dict]]:
    ds = load_from_disk(str(out))
    return list(ds["train_sft"]), list(ds["test_sft"])


def test_held_out_shape_30_requests_34_rows_rerun_none(tmp_path, repo_root):
    data = write_jsonl(tmp_path / "F.jsonl", mixed_rows())
    out = tmp_path / "OUT"
    # collect.py run as `__main__` in this process (the split and the ledger are the point; the
    # killed run below is a real process)
    with ProtocolServer(latency=0.0, rpm=0) as server:
        cmd = argv(data, out, server.base_url(), "--test-size", "6", "--seed", "3")
        res = run_script(repo_root / "collect.py", cmd, cwd=repo_root)
        assert res.returncode == 0, res.stderr[-2000:]
        assert server.stats()["total"] == 30
        train, test = splits(out)
        assert (len(train), len(test)) == (28, 6)
        assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
        rows = train + test
        assert len({r["prompt_id"] for r in rows}) == 34
        assert all(r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"] for r in rows)
        logged = [r for r in rows if r["prompt"].startswith("Logged")]
        assert sorted(r["messages"][-1]["content"] for r in logged) == [f"Logged answer {i}." for i in range(4)]
        asked = [r for r in rows if not r["prompt"].startswith("Logged")]
        assert all(r["messages"][-1]["content"] == "echo: " + r["prompt"] for r in asked)
        assert {r["category"] for r in rows} == {"general"}
        summary = json.loads((out / "summary.json").read_text())
        assert summary["duplicates_dropped"] == 2 and summary["already_answered"] == 4
        assert summary["answered_by_service_llm"] == 30
        card = (out / "README.md").read_text()
        assert "model: M" in card and "temperature" in card  # the service model and its settings

        rerun = run_script(repo_root / "collect.py", cmd, cwd=repo_root)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert server.stats()["total"] == 30  # the rerun sent nothing
        assert splits(out) == (train, test)  # same seed, same split


def test_sigkill_mid_run_then_rerun_loses_nothing(tmp_path, repo_root):
    n = 24
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": prompt(i)} for i in range(n)])
    out = tmp_path / "ref"
    with ProtocolServer(latency=0.2, rpm=0) as server:
        cmd = [sys.executable, "collect.py", *argv(data, out, server.base_url(), "--gen-workers", "2",
                                                   "--test-size", "0.25")]
        proc = subprocess.Popen(cmd, cwd=repo_root, env=stage_env(repo_root), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        kill_when_accepted(proc, lambda: server.stats()["accepted"], 8, 180, "collect.py")
        assert proc.returncode == -signal.SIGKILL
        before = server.stats()["total"]
        assert 8 <= before < n
        assert not (out / "dataset_dict.json").exists()  # nothing half-written

        res = subprocess.run(cmd, cwd=repo_root, env=stage_env(repo_root), capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        after = server.stats(detail=True)
        # every prompt answered; only the (at most 2) requests in flight at the kill were asked twice
        assert n <= after["total"] <= n + 2
        assert after["distinct_requests"] == n
        train, test = splits(out)
        assert (len(train), len(test)) == (18, 6)
        assert sorted(r["prompt"] for r in train + test) == sorted(prompt(i) for i in range(n))


def test_txt_list_batch_pair_categories_and_stratified_split(tmp_path, repo_root):
    """A .txt prompt list plus an OpenAI Batch API pair: answers joined on custom_id are kept,
    a failed batch request and the list's prompts are asked; categories stratify the split."""
    txt = tmp_path / "prompts.txt"
    txt.write_text("".join(prompt(i) + "\n" for i in range(6)) + "\n" + prompt(0) + "\n")  # a blank line, a duplicate
    requests = [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                 "body": {"model": "gpt-4o", "messages": [{"role": "system", "content": "Be brief."},
                                                          {"role": "user", "content": f"Batch prompt {i} about "
                                                           f"{TOPICS[i % 6]} and more words {i * 11}."}]},
                 "category": "batch-even" if i % 2 == 0 else "batch-odd"} for i in range(8)]
    outputs = [{"id": f"o{i}", "custom_id": f"req-{i}", "error": None,
                "response": {"status_code": 200, "body": {"choices": [{"message": {"role": "assistant",
                                                                                  "content": f"Batch answer {i}"}}]}}}
               for i in range(8) if i != 5]
    outputs.append({"id": "o5", "custom_id": "req-5", "response": {"status_code": 500, "body": {}},
                    "error": {"message": "server error"}})
    bin_, bout = write_jsonl(tmp_path / "in.jsonl", requests), write_jsonl(tmp_path / "out.jsonl", outputs)
    out = tmp_path / "ref"
    with ProtocolServer(latency=0.0, rpm=0) as server:
        code = collect.main(argv(txt, out, server.base_url(), "--batch-input", str(bin_), "--batch-output",
                                 str(bout), "--test-size", "0.5", "--seed", "1", "--default-category", "listed"))
        assert code == 0
        assert server.stats()["total"] == 6 + 1  # the list's 6 prompts and the failed batch request
        sent = server.stats(detail=True)["openai_requests"]
        resent = [r for r in sent if "Batch prompt 5" in json.dumps(r)]
        assert resent and resent[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    train, test = splits(out)
    rows = train + test
    assert len(rows) == 14
    by_id = {r["prompt"]: r for r in rows}
    assert by_id[f"Batch prompt 2 about {TOPICS[2]} and more words 22."]["messages"][-1]["content"] == "Batch answer 2"
    assert by_id[f"Batch prompt 5 about {TOPICS[5]} and more words 55."]["messages"][-1]["content"].startswith("echo:")
    # stratified: each category keeps half its rows in the test split
    assert Counter(r["category"] for r in test) == {"listed": 3, "batch-even": 2, "batch-odd": 2}


@pytest.mark.parametrize("extra, rows, message", [
    (("--test-size", "40"), None, "leaves no train rows"),
    (("--test-size", "1.5"), None, "neither a whole row count"),
    ((), [{"text": "no prompt column here"}], "no prompt column"),
    (("--batch-output", "x.jsonl"), None, "batch_output needs batch_input"),
])
def test_bad_inputs_exit_2_before_any_request(tmp_path, extra, rows, message):
    data = write_jsonl(tmp_path / "p.jsonl", rows or mixed_rows())
    with ProtocolServer(latency=0.0, rpm=0) as server:
        with pytest.raises(UsageError, match=message) as err:
            collect.main(argv(data, tmp_path / "o", server.base_url(), *extra))
        assert err.value.exit_code == 2
        assert server.stats()["total"] == 0


def test_answered_row_wins_over_its_bare_duplicate_and_dry_run_counts(tmp_path, capsys):
    rows = [{"prompt": prompt(1)}, {"prompt": prompt(2)}, {"prompt": prompt(3)},
            {"prompt": prompt(1), "completion": "already known"}]
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    with ProtocolServer(latency=0.0, rpm=0) as server:
        assert collect.main(argv(data, tmp_path / "o", server.base_url(), "--test-size", "1", "--dry-run")) == 0
        assert "2 call" in capsys.readouterr().out
        assert collect.main(argv(data, tmp_path / "o", server.base_url(), "--test-size", "1")) == 0
        assert server.stats()["total"] == 2
    train, test = splits(tmp_path / "o")
    answers = {r["prompt"]: r["messages"][-1]["content"] for r in train + test}
    assert answers[prompt(1)] == "already known"


def test_a_folder_with_one_split_serves_the_default_split_name(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    write_jsonl(folder / "train_sft.jsonl", [{"question": prompt(i), "answer": f"A{i}"} for i in range(5)])
    with ProtocolServer(latency=0.0, rpm=0) as server:
        assert collect.main(argv(folder, tmp_path / "o", server.base_url(), "--test-size", "2")) == 0
        assert server.stats()["total"] == 0  # every row held its answer
    train, test = splits(tmp_path / "o")
    assert (len(train), len(test)) == (3, 2)
    assert sorted(r["messages"][-1]["content"] for r in train + test) == [f"A{i}" for i in range(5)]


def test_split_counts_and_strata():
    assert rows_for_test(6, 34) == 6 and rows_for_test(0.1, 34) == 3 and rows_for_test(0.01, 34) == 1
    keys = ["a"] * 10 + ["b"] * 6 + ["c"] * 4
    train, test = stratified_split(keys, 5, seed=3)
    assert sorted(train + test) == list(range(20)) and not set(train) & set(test)
    got = Counter(keys[i] for i in test)
    assert sum(got.values()) == 5 and got["a"] in (2, 3) and got["b"] in (1, 2) and got["c"] == 1
    assert stratified_split(keys, 5, seed=3) == (train, test)
    assert stratified_split(keys, 5, seed=4) != (train, test)
