"""No paid call lost or made twice, outputs atomic, one writer per output folder (issue 14).

Every stage run goes against the local protocol server, which counts each request and each
successful (billable) answer. Runs that are killed, interrupted, locked or raced are real
subprocesses; the three whose point is what one complete run writes (shared calls, masking,
skipped rows) run the script in this process (`run_here`), saving a stage's imports each."""
from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import load_from_disk

from tests.inprocess import run_script
from tests.servers.bad_inputs import REPO, eval_argv, response_rows, stage_env, write_jsonl
from tests.servers.output_writer import check
from tests.servers.protocol_server import ProtocolServer, judge_reply_json


def run_stage(argv: list[str], work: Path, **kw) -> subprocess.CompletedProcess:
    env = {**stage_env(work), "LLAMADUO_LOG_LEVEL": "INFO", **kw.pop("env", {})}
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=kw.pop("timeout", 300), **kw)


def run_here(argv: list[str], work: Path) -> subprocess.CompletedProcess:
    """`run_stage` in this process: the script file as `__main__` with the same environment."""
    return run_script(REPO / argv[0], argv[1:], cwd=REPO, env={**stage_env(work), "LLAMADUO_LOG_LEVEL": "INFO"})


def start_stage(argv: list[str], work: Path) -> subprocess.Popen:
    env = {**stage_env(work), "LLAMADUO_LOG_LEVEL": "INFO"}
    return subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


NO_BAR = ("--avg_similarity_threshold", "0", "--avg_precision_threshold", "0", "--coverage_threshold", "0")


def judging(server: ProtocolServer, tmp_path: Path, n: int, workers: int) -> tuple[list[str], Path, subprocess.Popen]:
    """Start evaluation.py judging n distinct rows; return its argv, output folder and process."""
    data = write_jsonl(tmp_path / "resp.jsonl", response_rows(n))
    out = tmp_path / "eval"
    argv = eval_argv(server.url, data, out, "--eval_workers", str(workers), *NO_BAR)
    return argv, out, start_stage(argv, tmp_path)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ----------------------------------------------------------------------------- single-flight


def test_identical_rows_make_one_call_and_a_rerun_reports_the_same_numbers(tmp_path):
    """A judge whose scores vary per request (like a real LLM at temperature > 0): identical
    rows must share one call, and the rerun (all from the ledger) must report the same scores."""
    scores = itertools.count(11, 17)

    def varying(provider: str, prompt: str):
        if "<candidate_answer>" not in prompt:
            return None
        s = next(scores) % 100
        return judge_reply_json(s, 100 - s)

    rows = response_rows(2)
    rows = [rows[0], dict(rows[0]), dict(rows[0]), rows[1]]  # three identical rows, one other
    data = write_jsonl(tmp_path / "resp.jsonl", rows)
    out = tmp_path / "eval"
    argv = eval_argv("", data, out, "--eval_repeat", "2", "--avg_similarity_threshold", "0",
                     "--avg_precision_threshold", "0", "--coverage_threshold", "0")
    with ProtocolServer(reply_override=varying) as server:
        argv[argv.index("--service_llm_base_url") + 1] = server.base_url("openai")
        first = run_here(argv, tmp_path)
        assert first.returncode == 0, first.stderr[-3000:]
        assert server.stats()["total"] == 2 * 2  # 2 distinct rows x 2 repeats
        s1 = json.loads((out / "summary.json").read_text())
        d1 = load_from_disk(str(out))["eval"]
        second = run_here(argv, tmp_path)
        assert second.returncode == 0, second.stderr[-3000:]
        assert server.stats()["total"] == 4  # the rerun is all ledger hits
    d2 = load_from_disk(str(out))["eval"]
    s2 = json.loads((out / "summary.json").read_text())
    assert d1["similarity_per_repeat"] == d2["similarity_per_repeat"]
    assert d1["similarity_per_repeat"][0] == d1["similarity_per_repeat"][1] == d1["similarity_per_repeat"][2]
    assert (s1["mean_similarity"], s1["mean_precision"]) == (s2["mean_similarity"], s2["mean_precision"])
    assert s1["shared_calls"] == s2["shared_calls"] == 4  # rows 1 and 2, two repeats each
    assert s1["this_run"]["calls"] == 4 and s2["this_run"]["cached"] == 4
    assert s1["calls"] == s2["calls"] == 4 and s1["cost_usd"] == s2["cost_usd"]


# ----------------------------------------------------------------------------- the ledger mid-run


def test_ledger_lost_mid_run_saves_paid_answers_and_the_rerun_pays_only_for_the_rest(tmp_path):
    """The output folder (and the ledger in it) is deleted while judging: the run stops
    starting calls, writes every answer it paid for to a sidecar in the temp folder, exits 1
    with one line; the rerun imports it and asks only for what was never answered."""
    n = 30
    with ProtocolServer(latency=0.1) as server:
        argv, out, proc = judging(server, tmp_path, n, workers=2)
        wait_for(lambda: server.stats()["answered"] >= 6 or proc.poll() is not None, 120, "judging to start")
        shutil.rmtree(out)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 1, stderr[-3000:]
        assert "Traceback" not in stderr and len(error_lines(stderr)) == 1, stderr[-3000:]
        assert "saved to" in error_lines(stderr)[0] and "next run imports" in error_lines(stderr)[0]
        paid = server.stats()["answered"]
        assert paid < n  # it stopped starting calls
        sidecars = list((tmp_path / "tmpdir").glob("llamaduo-ledger-*.unsaved.jsonl"))
        assert len(sidecars) == 1 and len(sidecars[0].read_text().splitlines()) == paid

        rerun = run_stage(argv, tmp_path)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        stats = server.stats()
    assert stats["answered"] == n and stats["answered_repeats"] == 0  # nothing paid twice
    assert not sidecars[0].exists()  # imported, then removed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["this_run"]["cached"] == paid and summary["judgements"] == n and summary["failures"] == 0


def test_ctrl_c_finishes_the_calls_in_flight_so_the_rerun_repeats_none(tmp_path):
    n = 30
    with ProtocolServer(latency=0.3) as server:
        argv, out, proc = judging(server, tmp_path, n, workers=4)
        wait_for(lambda: server.stats()["answered"] >= 5, 120, "judging to start")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
        assert "finishing the calls in flight" in stderr
        paid = server.stats()["answered"]
        assert paid < n
        rerun = run_stage(argv, tmp_path)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        stats = server.stats()
    assert stats["answered_repeats"] == 0 and stats["answered"] == n
    assert json.loads((out / "summary.json").read_text())["this_run"]["cached"] == paid


# ----------------------------------------------------------------------------- the output lock


def test_second_run_on_the_same_output_exits_2_naming_the_holder(tmp_path):
    n = 80  # ~12 s of judging: the second run starts (~5 s of imports) while the first holds the lock
    (tmp_path / "second").mkdir()
    with ProtocolServer(latency=0.3) as server:
        argv, _, first = judging(server, tmp_path, n, workers=2)
        wait_for(lambda: server.stats()["total"] >= 1, 120, "the first run to call")
        second = run_stage(argv, tmp_path / "second")
        assert first.poll() is None, "the first run ended before the second one started"
        _, stderr = first.communicate(timeout=180)
        assert first.returncode == 0, stderr[-3000:]
        total = server.stats()["total"]
    assert second.returncode == 2 and "Traceback" not in second.stderr
    (line,) = error_lines(second.stderr)
    assert f"pid {first.pid} on host {socket.gethostname()}" in line and "in use by another run" in line
    assert total == n  # the second run paid for nothing


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    data = write_jsonl(tmp_path / "resp.jsonl", response_rows(2))
    out = tmp_path / "eval"
    (tmp_path / ".eval.lock").touch()
    (tmp_path / ".eval.lock.owner").write_text(json.dumps(
        {"pid": dead.pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00"}))
    with ProtocolServer() as server:
        res = run_stage(eval_argv(server.url, data, out, *NO_BAR), tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"took over the lock on {out} left by pid {dead.pid}" in res.stderr
    assert "that process is gone" in res.stderr
    assert not (tmp_path / ".eval.lock.owner").exists()  # released cleanly at the end


# ----------------------------------------------------------------------------- atomic outputs


def test_kill_9_at_random_points_never_leaves_a_mixed_output(tmp_path):
    """A writer replaces the folder version after version; SIGKILL at random moments. After
    each kill a reader finds one complete version: dataset, jsonl, summary and report agree."""
    out = tmp_path / "out"
    rng = random.Random(14)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    kills = 0
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-m", "tests.servers.output_writer", str(out)], cwd=REPO,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout.readline().strip(), "the writer wrote nothing"  # at least one version done
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        assert check(out) is None, check(out)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.") and not p.name.startswith(".out.lock")]
    # staging folders of killed writers are cleaned by the next writer's lock; at most the last remains
    assert len(leftovers) <= 1, leftovers
    assert kills == 8


# ----------------------------------------------------------------------------- secrets, sizes


def test_url_credentials_are_masked_in_log_card_summary_and_print_config(tmp_path):
    data = write_jsonl(tmp_path / "resp.jsonl", response_rows(2))
    out = tmp_path / "eval"
    with ProtocolServer() as server:
        url = server.url.replace("http://", "http://judge-user:pa55word-xyz@")
        argv = eval_argv(url, data, out, "--avg_similarity_threshold", "0", "--avg_precision_threshold", "0",
                         "--coverage_threshold", "0")
        res = run_here(argv, tmp_path)
        printed = run_here([*argv, "--print-config"], tmp_path)
        assert server.stats()["answered"] == 2  # the URL with credentials still works
    assert res.returncode == 0 and printed.returncode == 0, res.stderr[-3000:]
    written = [res.stdout, res.stderr, printed.stdout, *(p.read_text() for p in out.glob("*.md")),
               (out / "summary.json").read_text()]
    assert all("pa55word-xyz" not in text and "judge-user" not in text for text in written)
    assert "http://***@127.0.0.1" in (out / "README.md").read_text()
    assert "http://***@127.0.0.1" in printed.stdout


def test_oversize_rows_can_be_skipped_and_are_counted(tmp_path):
    rows = response_rows(4)
    rows[2]["candidate_responses"] = "word " * 5000  # ~6k tokens
    data = write_jsonl(tmp_path / "resp.jsonl", rows)
    out = tmp_path / "eval"
    with ProtocolServer() as server:
        argv = eval_argv(server.url, data, out, "--max_input_tokens", "2000", "--oversize_rows", "skip",
                         "--max_failure_ratio", "0.5", "--avg_similarity_threshold", "0",
                         "--avg_precision_threshold", "0", "--coverage_threshold", "0")
        res = run_here(argv, tmp_path)
        assert server.stats()["total"] == 3  # the oversize row was never sent
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["this_run"]["skipped_oversize"] == 1 and summary["failures"] == 1
    assert "exceeds max_input_tokens=2000" in res.stderr
    assert "max_input_tokens" in load_from_disk(str(out))["eval"]["failure_reason"][2]


@pytest.mark.parametrize("model,expected", [("gpt-4o-2024-08-06", 127_000), ("claude-3-5-haiku-latest", 199_000),
                                            ("mock-judge", 100_000)])
def test_default_max_input_tokens_comes_from_the_model(model, expected):
    from llamaduo.service_llm.limits import default_max_input_tokens

    assert default_max_input_tokens(model, 1000) == expected
