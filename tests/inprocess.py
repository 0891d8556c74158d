"""Run a stage's `main(argv)` inside the test process, the way its script runs it: `errors.run_main`
turns an expected error into one `error: ...` line and the exit code; the log goes to stderr.

WHY: a stage process spends seconds importing (datasets, pyarrow...) before it parses one flag. Tests
of argument parsing, `--print-config` and bad-input refusal do not test the process boundary, so
they run in-process. Tests where the boundary is the point (kill -9, console scripts, the loop, the
exit status a shell sees) keep real subprocesses.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import subprocess
from pathlib import Path
from typing import Sequence

from llamaduo.errors import run_main

# setup_logging's format: the stage adds its masking filter to every root handler, this one included
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def run_stage(stage: str, argv: Sequence[str], cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """`python <stage>.py ARGV` from `cwd`, in-process: a CompletedProcess with the exit code,
    stdout and stderr (log lines included)."""
    main = importlib.import_module(f"llamaduo.pipeline.{stage}").main
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    root = logging.getLogger()
    level, before = root.level, os.getcwd()
    root.addHandler(handler)
    root.setLevel(os.environ.get("LLAMADUO_LOG_LEVEL", "INFO"))
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_main(lambda: main(list(argv)))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        os.chdir(before)
        root.removeHandler(handler)
        root.setLevel(level)
    return subprocess.CompletedProcess([f"{stage}.py", *argv], code, out.getvalue(), err.getvalue())
