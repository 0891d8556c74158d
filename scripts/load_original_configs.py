#!/usr/bin/env python
"""Load every stage config of an original LlamaDuo config tree with `--print-config`; count them.

Point it at your own checkout of the original (the folder holding `config/`), or leave it at the
default: our small synthesised tree in tests/data/original_llamaduo/ (nothing is fetched). Each
stage config is run as a user would, from the tree's root (the original resolved its paths,
such as `config/prompts.toml`, from there):

    python <stage>.py --from-config <file> --print-config

The stage is read from the file's keys (a training recipe filed under batch-infer/ is still a
fine-tuning recipe); files that only hold generation settings (`*gen_config*.yaml`) are the
files stage configs point to, not stage configs, and are skipped. Prints one line per failure
and `N tried / M loaded`; the exit status is 0 only when all load.

    .venv/bin/python scripts/load_original_configs.py --tree ~/src/llamaduo [--jobs 2]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TREE = REPO / "tests" / "data" / "original_llamaduo"

# A key that only one stage's configs carry -> that stage (checked in this order).
STAGE_KEYS = (
    ("model_name_or_path", "finetune"),
    ("dataset_mixer", "finetune"),
    ("ft_model_id", "batch_inference"),
    ("test_ds_id", "batch_inference"),
    ("eval_ds_id", "evaluation"),
    ("reference_ds_id", "data_gen"),
    ("synth_ds_id", "data_gen"),
    ("first_ds_id", "dataset_merge"),
)
NAME_PREFIXES = (("evaluation", "evaluation"), ("batch_inference", "batch_inference"),
                 ("dataset_merge", "dataset_merge"), ("synth_data_gen", "data_gen"))


def stage_of(config: Path) -> str | None:
    """The stage script for one of the original's YAML files (None: a generation-settings file)."""
    if "gen_config" in config.name:
        return None
    try:
        keys = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        keys = {}  # let the stage script report the YAML error; pick the stage by name
    if isinstance(keys, dict):
        keys = {str(k).replace("-", "_") for k in keys}
        for key, stage in STAGE_KEYS:
            if key in keys:
                return stage
    for prefix, stage in NAME_PREFIXES:
        if config.name.startswith(prefix):
            return stage
    return "evaluation" if "eval" in config.parts else "finetune"


def load(tree: Path, config: Path, stage: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / f"{stage}.py"), "--from-config",
                           str(config.relative_to(tree)), "--print-config"],
                          cwd=tree, capture_output=True, text=True, timeout=600)


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit {proc.returncode}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tree_pos", nargs="?", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help="a checkout of the original (the folder holding config/)")
    parser.add_argument("--jobs", type=int, default=2, help="configs loaded at once (default 2)")
    args = parser.parse_args(argv)
    tree = (args.tree or args.tree_pos or DEFAULT_TREE).expanduser().resolve()
    if not (tree / "config").is_dir():
        print(f"error: {tree} holds no config/ folder", file=sys.stderr)
        return 2
    files = sorted((tree / "config").rglob("*.yaml")) + sorted((tree / "config").rglob("*.yml"))
    configs = [(c, s) for c in files if (s := stage_of(c))]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        procs = list(pool.map(lambda cs: load(tree, *cs), configs))
    failed = [(c, s, p) for (c, s), p in zip(configs, procs) if p.returncode != 0]
    for config, stage, proc in failed:
        print(f"FAIL {stage} {config.relative_to(tree)}: exit {proc.returncode}: {last_line(proc)}")
    print(f"{len(configs)} tried / {len(configs) - len(failed)} loaded")
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
