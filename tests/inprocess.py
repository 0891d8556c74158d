"""Run a stage's `main(argv)`, or a script file, inside the test process the way its script runs it:
`errors.run_main` turns an expected error into one `error: ...` line and the exit code; the log
goes to stderr.

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
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

from llamaduo.errors import run_main

# setup_logging's format: the stage adds its masking filter to every root handler, this one included
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def run_stage(stage: str, argv: Sequence[str], cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """`python <stage>.py ARGV` from `cwd`, in-process: a CompletedProcess with the exit code,
    stdout and stderr (log lines included)."""
    main = importlib.import_module(f"llamaduo.pipeline.{stage}").main
    code, out, err = _captured(lambda: run_main(lambda: main(list(argv))), cwd)
    return subprocess.CompletedProcess([f"{stage}.py", *argv], code, out, err)


def run_script(script: str | Path, argv: Sequence[str], cwd: str | Path | None = None,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGV` from `cwd`, in-process: the script file itself run as `__main__`
    (runpy) with `sys.argv` and, when given, exactly the environment `env` (both restored after)."""
    saved_argv, saved_env = sys.argv, dict(os.environ)
    sys.argv = [str(script), *argv]
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    try:
        code, out, err = _captured(lambda: runpy.run_path(str(script), run_name="__main__"), cwd)
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess([str(script), *argv], code, out, err)


def _captured(call: Callable[[], object], cwd: str | Path | None) -> tuple[int, str, str]:
    """Run `call` from `cwd` with stdout, stderr and the log captured: (exit code, out, err)."""
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    root = logging.getLogger()
    level, before = root.level, os.getcwd()
    root.addHandler(handler)
    root.setLevel(os.environ.get("LLAMADUO_LOG_LEVEL", "INFO"))
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                call()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        os.chdir(before)
        root.removeHandler(handler)
        root.setLevel(level)
    return code, out.getvalue(), err.getvalue()
