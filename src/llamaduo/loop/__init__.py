"""The LlamaDuo loop: `llamaduo.sh` (package data) chains the five stages round by round.

The loop itself is bash; these modules are its helpers, each run as `python -m llamaduo.loop.<name>`:
`config` (reads values from the stage configs, the loop budget), `check` (the check of all five
configs before round 0), `measured` (runs one stage and records its peak memory) and
`results_table` (the per-round table). Run the loop with `llamaduo-loop` (installed) or
`bash scripts/llamaduo.sh` (a clone); see docs/loop.md.
"""
from importlib.resources import files


def script_path() -> str:
    """The path of the packaged loop script (a real file: the wheel installs unzipped)."""
    return str(files(__name__) / "llamaduo.sh")
