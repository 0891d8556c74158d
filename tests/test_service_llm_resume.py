"""kill -9 in the middle of a run, then rerun: finished calls are never requested again
(counted on the server), and the rerun completes the rest."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys

import pytest

from tests.servers.process import kill_when_accepted
from tests.servers.protocol_server import ProtocolServer

N_JOBS = 60


def client_cmd(server: ProtocolServer, ledger) -> list[str]:
    return [sys.executable, "-m", "tests.servers.service_client", "--provider", "openai",
            "--base-url", server.base_url("openai"), "--ledger", str(ledger), "--n", str(N_JOBS),
            "--workers", "3"]


def server_request_key(messages: list[dict], seed: int) -> str:
    """The protocol server's per-request hash (provider, [(role, text)], seed)."""
    pairs = [[m["role"], m["content"]] for m in messages]
    return hashlib.sha256(json.dumps(["openai", pairs, seed]).encode("utf-8")).hexdigest()[:16]


def test_kill_9_then_rerun_repeats_no_finished_request(tmp_path, repo_root):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo_root / "src"), str(repo_root)]))
    ledger = tmp_path / "ledger.sqlite"
    with ProtocolServer(latency=0.1) as server:
        proc = subprocess.Popen(client_cmd(server, ledger), cwd=repo_root, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        kill_when_accepted(proc, lambda: server.stats()["accepted"], 15, 120, "the client")
        assert proc.returncode == -signal.SIGKILL

        with sqlite3.connect(ledger) as db:  # what the killed run had finished
            rows = db.execute("SELECT messages, sample_index FROM completions").fetchall()
        done_keys = {server_request_key(json.loads(m), s) for m, s in rows}
        assert 0 < len(done_keys) < N_JOBS
        before = server.stats(detail=True)
        assert done_keys <= set(before["by_request"])

        rerun = subprocess.run(client_cmd(server, ledger), cwd=repo_root, env=env, capture_output=True,
                               text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        summary = json.loads(rerun.stdout.strip().splitlines()[-1])
        assert summary["ok"] == N_JOBS
        assert summary["cached"] == len(done_keys) and summary["calls"] == N_JOBS - len(done_keys)

        after = server.stats(detail=True)
        assert after["total"] - before["total"] == N_JOBS - len(done_keys)
        assert all(after["by_request"][k] == 1 for k in done_keys)  # finished work: asked exactly once
        # only requests in flight at the kill (at most one per worker) were asked twice
        assert sum(1 for v in after["by_request"].values() if v > 1) <= 3
        assert after["distinct_requests"] == N_JOBS


@pytest.mark.parametrize("path", ["/_stats", "/_reset"])
def test_server_subprocess_stats_and_reset(tmp_path, repo_root, path):
    """The server as a subprocess (how stage end-to-end tests use it)."""
    import urllib.request

    port_file = tmp_path / "port"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo_root / "src"), str(repo_root)]))
    server = subprocess.Popen([sys.executable, "-m", "tests.servers.protocol_server", "--port", "0",
                               "--port-file", str(port_file), "--rpm", "100"], cwd=repo_root, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().startswith("listening on http://127.0.0.1:")
        url = f"http://127.0.0.1:{port_file.read_text()}"
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
        req = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        reply = json.load(urllib.request.urlopen(req, timeout=10))
        assert reply["choices"][0]["message"]["content"] == "echo: hi"
        if path == "/_reset":
            urllib.request.urlopen(urllib.request.Request(url + "/_reset", data=b"{}"), timeout=10)
        stats = json.load(urllib.request.urlopen(url + "/_stats", timeout=10))
        assert stats["total"] == (0 if path == "/_reset" else 1)
    finally:
        server.kill()
        server.wait()
