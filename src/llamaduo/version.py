"""`--version` for every command, without importing torch, transformers or datasets.

WHY a module of its own: the console entry points answer `--version` before importing the
stage, so the answer costs milliseconds, not the seconds a torch import takes.
"""
from __future__ import annotations

from importlib import metadata

import llamaduo

VERSION_FLAGS = ("--version", "-V")


def version() -> str:
    """The installed distribution's version; the source tree's when run from a clone without install."""
    try:
        return metadata.version("llamaduo")
    except metadata.PackageNotFoundError:
        return llamaduo.__version__


def version_line(prog: str) -> str:
    """What `--version` prints, e.g. `llamaduo-merge (llamaduo) 0.1.0`."""
    return f"{prog} (llamaduo) {version()}"


def wants_version(argv: list[str]) -> bool:
    """`--version` anywhere before a `--` ends the options (argparse's `version` action does the same)."""
    head = argv[:argv.index("--")] if "--" in argv else argv
    return any(a in VERSION_FLAGS for a in head)
