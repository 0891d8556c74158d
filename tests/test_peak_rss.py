"""peak_rss_mb(): the stage's own peak and its largest finished child's, in MiB (summary key
`peak_rss_mb` of every stage)."""
from __future__ import annotations

import subprocess
import sys

ALLOC = "b = bytearray(300 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"


def _run(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return float(out.stdout.strip())


def test_counts_the_process_itself() -> None:
    small = _run("from src.peak_rss import peak_rss_mb; print(peak_rss_mb())")
    big = _run(f"{ALLOC}\nfrom src.peak_rss import peak_rss_mb; print(peak_rss_mb())")
    assert big >= 300 > small


def test_counts_a_finished_child() -> None:
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', " + repr(ALLOC) + "], check=True);"
            "from src.peak_rss import peak_rss_mb; print(peak_rss_mb())")
    assert _run(code) >= 300
