"""The exceptions that map to exit codes, kept in one place so every script agrees.

| code | meaning |
|---|---|
| 0 | success (for evaluation: qualified) |
| 1 | the run failed: too many failures, or a budget or round limit hit first |
| 2 | bad usage or input, found before any model load or paid call |
| 3 | evaluation completed and did not qualify |
"""
from __future__ import annotations

import logging
import sys
from typing import Callable, NoReturn

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_QUALIFIED = 3

EXIT_CODES_HELP = (
    "exit codes: 0 success (evaluation: qualified), 1 run failed, "
    "2 bad usage or input (found before any model load or paid call), "
    "3 evaluation completed but did not qualify"
)


class LlamaDuoError(Exception):
    """Base class: an expected failure with a one-line message and an exit code."""

    exit_code = EXIT_FAILED


class UsageError(LlamaDuoError):
    """Bad usage or input. Raised before any model is loaded or any paid call is made."""

    exit_code = EXIT_USAGE


class RunFailed(LlamaDuoError):
    """The run started but could not finish its work (too many failures, budget hit...)."""

    exit_code = EXIT_FAILED


def run_main(main: Callable[[], int]) -> NoReturn:
    """Run a stage's main function and exit with its code.

    Expected errors print one clean line (no traceback) so shell scripts can branch on
    the exit code and humans can read the cause at a glance.
    """
    try:
        code = main()
    except LlamaDuoError as err:
        from llamaduo.redact import redact

        # one line, always: a wrapped library message may span several
        print(f"error: {redact(' '.join(str(err).split()))}", file=sys.stderr)
        code = err.exit_code
    except KeyboardInterrupt:
        logging.getLogger("llamaduo").warning("interrupted; finished work is kept and a rerun resumes")
        code = 130
    sys.exit(code)
