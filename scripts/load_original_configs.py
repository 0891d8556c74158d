#!/usr/bin/env python
"""Load every stage config of an original LlamaDuo config tree with `--print-config`; count them.

Point it at your own checkout of the original (the folder holding `config/`), or leave it at the
default: our small synthesised tree in tests/data/original_llamaduo/ (nothing is fetched). Each
stage config is parsed as a user's command parses it, from the tree's root (the original resolved
its paths, such as `config/prompts.toml`, from there):

    python <stage>.py --from-config <file> --print-config

The stage is read from the file's keys (a training recipe filed under batch-infer/ is still a
fine-tuning recipe); files that only hold generation settings (`*gen_config*.yaml`) are the
files stage configs point to, not stage configs, and are skipped. Prints one line per failure
(the stage's exit code and its own `error:` line) and `N tried / M loaded`; the exit status is 0
only when all load.

WHY in one process: each stage's parsing is the same function its script runs (`parse_args`),
and a process per file paid the stage's imports every time (about 10 s of CPU for each training
recipe, TRL's parser).

    .venv/bin/python scripts/load_original_configs.py --tree ~/src/llamaduo
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import sys
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


def load(tree: Path, config: Path, stage: str) -> tuple[int, str]:
    """(exit code, last line) of `python <stage>.py --from-config <config> --print-config` from
    the tree's root, parsed in this process: (0, "") when it loads, else the code and the one
    line the stage prints (errors.run_main); a crash gives 1 and its exception's line."""
    from llamaduo.errors import LlamaDuoError
    from llamaduo.redact import redact

    parse_args = importlib.import_module(f"llamaduo.pipeline.{stage}").parse_args
    before = os.getcwd()
    logging.disable(logging.CRITICAL)  # the stage's warnings (renamed keys...) are not the report
    try:
        os.chdir(tree)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            parse_args(["--from-config", str(config.relative_to(tree)), "--print-config"])
    except SystemExit as exit_:  # --print-config printed the config and exited
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        return code, "" if code == 0 else f"exit {code}"
    except LlamaDuoError as err:
        return err.exit_code, f"error: {redact(' '.join(str(err).split()))}"
    except Exception as err:  # noqa: BLE001 - a crash is that file's failure, reported like the others
        return 1, f"{type(err).__name__}: {' '.join(str(err).split())}"
    finally:
        os.chdir(before)
        logging.disable(logging.NOTSET)
    return 1, "the config parsed but --print-config printed nothing"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tree_pos", nargs="?", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help="a checkout of the original (the folder holding config/)")
    args = parser.parse_args(argv)
    tree = (args.tree or args.tree_pos or DEFAULT_TREE).expanduser().resolve()
    if not (tree / "config").is_dir():
        print(f"error: {tree} holds no config/ folder", file=sys.stderr)
        return 2
    files = sorted((tree / "config").rglob("*.yaml")) + sorted((tree / "config").rglob("*.yml"))
    configs = [(c, s) for c in files if (s := stage_of(c))]
    failed = [(c, s, result) for c, s in configs if (result := load(tree, c, s))[0] != 0]
    for config, stage, (code, line) in failed:
        print(f"FAIL {stage} {config.relative_to(tree)}: exit {code}: {line}")
    print(f"{len(configs)} tried / {len(configs) - len(failed)} loaded")
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
