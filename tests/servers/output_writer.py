"""Writes version after version of a stage-like output folder, for the kill -9 tests of
atomic outputs (tests/test_reliability.py, scripts/reliability_campaign.py). Not a user tool.

    python -m tests.servers.output_writer OUT_DIR [--versions N]

Version n is a dataset of n rows (split `eval`) plus summary.json {"version": n, "rows": n}
and report.md "version n", written the way the stages write them (hub.save_output with
extra_files, under the output lock). `check(out_dir)` says whether a reader sees one
complete version.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from datasets import Dataset


def write_version(out_dir: Path, n: int) -> None:
    from llamaduo.hub import save_output

    ds = Dataset.from_dict({"instructions": [f"row {i} of version {n}" for i in range(n)],
                            "version": [n] * n})

    def extra(folder: Path) -> None:
        (folder / "summary.json").write_text(json.dumps({"version": n, "rows": n}))
        (folder / "report.md").write_text(f"version {n}\n")

    save_output({"eval": ds}, str(out_dir), push=False, stage="evaluation", config={}, extra_files=extra)


def check(out_dir: Path) -> str | None:
    """None when the folder holds one complete version (or does not exist yet), else why not."""
    if not out_dir.exists():
        return None
    from datasets import load_from_disk

    try:
        summary = json.loads((out_dir / "summary.json").read_text())
        report = (out_dir / "report.md").read_text()
        ds = load_from_disk(str(out_dir))["eval"]
        lines = (out_dir / "eval.jsonl").read_text().splitlines()
    except Exception as err:  # noqa: BLE001 - any unreadable part is the finding
        return f"incomplete: {type(err).__name__}: {err}"
    n = summary["version"]
    if report != f"version {n}\n" or len(ds) != n or set(ds["version"]) != {n} or len(lines) != n:
        return f"mixed: summary v{n}, report {report.strip()!r}, dataset {len(ds)} rows, jsonl {len(lines)} lines"
    return None


def main(argv: list[str] | None = None) -> int:
    from llamaduo.outputs import OutputLock

    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--versions", type=int, default=10_000)
    ns = parser.parse_args(argv)
    out = Path(ns.out_dir)
    with OutputLock(out, "out_dir"):
        start = 1
        if (out / "summary.json").exists():
            start = json.loads((out / "summary.json").read_text())["version"] + 1
        for n in range(start, start + ns.versions):
            write_version(out, n)
            print(n, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
