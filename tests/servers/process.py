"""Running the protocol server, and a client under test, as real processes.

Shared by the tests and benchmarks that need a separate process: the server then has its own
GIL (like a remote API), and a client can be killed with SIGKILL mid-run to test resume.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def server_process(*args: str) -> Iterator[str]:
    """Start `python -m tests.servers.protocol_server [args]` on a free port; yield its base URL."""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.servers.protocol_server", "--port", "0", "--port-file", str(port_file),
             *args],
            cwd=REPO, env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)])), stdout=subprocess.PIPE, text=True)
        try:
            first_line = proc.stdout.readline()
            assert "listening" in first_line, f"protocol server did not start: {first_line!r}"
            yield f"http://127.0.0.1:{port_file.read_text().strip()}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def server_stats(url: str) -> dict:
    """The server's request counters (`GET /_stats`)."""
    with urllib.request.urlopen(url + "/_stats?detail=1", timeout=30) as resp:
        return json.load(resp)


def kill_when_accepted(proc: subprocess.Popen, accepted: Callable[[], int], at_least: int,
                       timeout_s: float, what: str) -> None:
    """SIGKILL `proc` once the server has accepted `at_least` requests: a crash mid-run."""
    deadline = time.monotonic() + timeout_s
    while accepted() < at_least:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{what} never got going"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
