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
    except Exception as err:  # noqa: BLE001 - only a full disk is turned into one line; the rest re-raises
        full = disk_full(err)
        if full is None:
            raise
        print(f"error: no space left on the device ({full.strerror}: {full.filename or 'a write'}); "
              "free some space and rerun: finished work is kept", file=sys.stderr)
        code = EXIT_FAILED
    sys.exit(code)


def disk_full(err: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT OSError in `err`'s chain (libraries wrap it: datasets, pyarrow,
    sqlite3), or None. A full disk is the machine's state, not a bug: one line, exit 1."""
    import errno

    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        if "No space left on device" in str(err) or "database or disk is full" in str(err):
            return OSError(errno.ENOSPC, "No space left on device")
        err = err.__cause__ or err.__context__
    return None
