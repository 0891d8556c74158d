"""`llamaduo init DIR`: write starter configs for the five stages into DIR/config/, plus
DIR/llamaduo.env pointing the loop at them.

The starters use the packaged defaults (no `prompt_tmpl_path` or other clone-only paths), the
embedded model and the offline reference judge, so they run on any machine once the user puts
data in DIR/data/sft (train.jsonl and test.jsonl of `messages`; train/test splits need no flag).
"""
from __future__ import annotations

import argparse
import sys
from importlib.resources import files
from pathlib import Path
from typing import Sequence

from llamaduo.errors import UsageError

STAGE_FILES = ("finetune.yaml", "batch_inference.yaml", "evaluation.yaml", "data_gen.yaml", "dataset_merge.yaml")
ENV_FILE = "llamaduo.env"


def init(folder: Path, force: bool = False) -> list[Path]:
    """Write the starter files; refuse to overwrite an existing one unless `force`."""
    targets = {name: folder / "config" / name for name in STAGE_FILES} | {ENV_FILE: folder / ENV_FILE}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not force:
        raise UsageError(f"{', '.join(existing)} already exist(s); pass --force to overwrite, or choose another folder")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file, not a folder")
    (folder / "config").mkdir(parents=True, exist_ok=True)
    (folder / "data" / "sft").mkdir(parents=True, exist_ok=True)
    for name, target in targets.items():
        target.write_text((files(__name__) / name).read_text(encoding="utf-8"), encoding="utf-8")
    return list(targets.values())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llamaduo init", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="where to write config/*.yaml and llamaduo.env (created if missing)")
    parser.add_argument("--force", action="store_true", help="overwrite existing starter files (default: False)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    written = init(Path(args.folder), args.force)
    print("\n".join(f"wrote {p}" for p in written))
    print(f"next: put train.jsonl and test.jsonl (a `messages` column) in {Path(args.folder) / 'data' / 'sft'}, then\n"
          f"  cd {args.folder} && . ./{ENV_FILE} && llamaduo-loop --check && llamaduo-loop")
    return 0
