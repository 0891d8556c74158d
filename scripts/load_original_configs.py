#!/usr/bin/env python
"""Load every reconstructed config of the original LlamaDuo with `--print-config`; count them.

The copies in tests/data/original_llamaduo/config/ were rebuilt, key for key, from the original
repository's files (see the README.md there); nothing is fetched. Each stage config is run
from that folder (the original resolved its paths from the repository root) as
`python <stage>.py --from-config <file> --print-config`, and the count loaded/tried is printed.

    .venv/bin/python scripts/load_original_configs.py [TREE]     # exit 0 when all load
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TREE = REPO / "tests" / "data" / "original_llamaduo"


def stage_of(config: Path) -> str | None:
    """The stage script for one of the original's config files (None: a generation file)."""
    name, parts = config.name, config.parts
    if "gen_config" in name:
        return None
    if name.startswith("evaluation") or "eval" in parts:
        return "evaluation"
    if name.startswith("batch_inference"):
        return "batch_inference"
    if name.startswith("dataset_merge"):
        return "dataset_merge"
    if name.startswith("synth_data_gen"):
        return "data_gen"
    return "finetune"  # alignment-handbook recipes (also the ones filed under batch-infer/)


def load(tree: Path, config: Path, stage: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / f"{stage}.py"), "--from-config",
                           str(config.relative_to(tree)), "--print-config"],
                          cwd=tree, capture_output=True, text=True, timeout=300)


def main(argv: list[str]) -> int:
    tree = Path(argv[0]) if argv else DEFAULT_TREE
    configs = [(c, stage_of(c.relative_to(tree))) for c in sorted((tree / "config").rglob("*.yaml"))]
    configs = [(c, s) for c, s in configs if s]
    loaded = 0
    for config, stage in configs:
        proc = load(tree, config, stage)
        ok = proc.returncode == 0
        loaded += ok
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        print(f"{'ok  ' if ok else 'FAIL'} {stage:16s} {config.relative_to(tree)}" + ("" if ok else f"  <- {last}"))
    print(f"loaded {loaded}/{len(configs)} stage configs")
    return 0 if loaded == len(configs) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
