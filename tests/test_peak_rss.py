"""peak_rss_mb(): the stage's own peak and its largest finished child's, in MiB (summary key
`peak_rss_mb` of every stage)."""
from __future__ import annotations

import subprocess
import sys

ALLOC = "b = bytearray(300 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"


# Linux keeps ru_maxrss across fork and exec, so a child of the (large) pytest process starts at
# pytest's size; a small intermediate process gives the measured one a small starting point.
VIA_SMALL_PARENT = ("import subprocess, sys; print(subprocess.run([sys.executable, '-c', sys.argv[1]], "
                    "capture_output=True, text=True, check=True).stdout)")


def _run(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", VIA_SMALL_PARENT, code], capture_output=True, text=True,
                         timeout=120, check=True)
    return float(out.stdout.strip())


def test_counts_the_process_itself() -> None:
    small = _run("from llamaduo.peak_rss import peak_rss_mb; print(peak_rss_mb())")
    big = _run(f"{ALLOC}\nfrom llamaduo.peak_rss import peak_rss_mb; print(peak_rss_mb())")
    assert big >= 300 > small


def test_counts_a_finished_child() -> None:
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', " + repr(ALLOC) + "], check=True);"
            "from llamaduo.peak_rss import peak_rss_mb; print(peak_rss_mb())")
    assert _run(code) >= 300
