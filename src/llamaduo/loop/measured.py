"""Run one loop stage and record its peak resident memory for the loop's `.done` marker.

    python -m llamaduo.loop.measured RSS_FILE -- COMMAND [ARGS...]

Why a launcher: bash cannot read one child's resource usage, and the stage's own summary is
written before it exits (a late allocation would be missed). `os.wait4` returns the kernel's
ru_maxrss for exactly this child and its descendants. SIGINT/SIGTERM are passed on to the
stage, so the loop's Ctrl-C handling (the stage flushes its partial output) is unchanged.
Exit status: the stage's own (128 + N when a signal N ended it).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m llamaduo.loop.measured RSS_FILE -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    rss_file, command = Path(argv[0]), argv[2:]
    child = subprocess.Popen(command)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
    while True:
        try:
            _, status, usage = os.wait4(child.pid, 0)
            break
        except InterruptedError:  # a forwarded signal interrupted the wait: wait again
            continue
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    rss_file.write_text(f"{usage.ru_maxrss * unit / 1024 / 1024:.1f}\n")
    return os.waitstatus_to_exitcode(status) if status & 0x7F == 0 else 128 + (status & 0x7F)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
