"""Tiny read-only helpers the loop script needs from the stage configs.

WHY a Python helper instead of grep/sed in bash: the stage configs are YAML (nested
mappings such as `dataset_mixer`, quoting, comments), and a shell parser would get them
subtly wrong. This reads them with PyYAML, the same library the stages use, and prints
plain values for the shell. It only reads; the stages stay the only owners of their keys.

Usage:
    python -m llamaduo.loop.config get CONFIG.yaml KEY [DEFAULT]
        print the value (JSON for mappings/lists); DEFAULT (or exit 2) when the key is absent
    python -m llamaduo.loop.config mixer DATASET_REF [FRACTION]
        print the JSON mapping {DATASET_REF: FRACTION} for finetune's `--dataset-mixer`
    python -m llamaduo.loop.config budget OUT MAX_COST_USD [STAGE_LIMIT]
        print the `--max-cost-usd` for the next paid stage: what is left of MAX_COST_USD after
        the spend recorded under OUT, or the stage config's own STAGE_LIMIT when smaller;
        exit 1 (printing the spend) when nothing is left
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml


def load_mapping(path: str) -> dict[str, Any]:
    """Load a YAML config file that must be a mapping; exit 2 with one line otherwise."""
    p = Path(path)
    if not p.is_file():
        raise SystemExit(_usage(f"config file not found: {path}"))
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise SystemExit(_usage(f"config file {path} is not a YAML mapping"))
    return data


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def format_value(value: Any) -> str:
    """Strings as-is (the shell wants them raw); everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def budget(out: Path, max_cost_usd: float, stage_limit: float | None) -> int:
    """The loop-wide budget: the next paid stage may spend what the earlier ones left.

    WHY the stages' summaries: each paid stage already records what it spent (tokens times
    src/llamaduo/defaults/pricing.yaml), so the loop sums those rather than keeping its own meter."""
    from llamaduo.loop.results_table import total_cost  # the table reads the same summaries

    spent = total_cost(out)
    left = max_cost_usd - spent
    if left <= 0:
        print(f"{spent:.4f}")
        return 1
    print(f"{min(left, stage_limit) if stage_limit else left:.6f}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "get":
        data = load_mapping(argv[1])
        if argv[2] in data and data[argv[2]] is not None:
            print(format_value(data[argv[2]]))
            return 0
        if len(argv) >= 4:
            print(argv[3])
            return 0
        return _usage(f"key {argv[2]!r} is not set in {argv[1]}")
    if len(argv) in (3, 4) and argv[0] == "budget":
        return budget(Path(argv[1]), float(argv[2]), float(argv[3]) if len(argv) == 4 and argv[3] else None)
    if len(argv) in (2, 3) and argv[0] == "mixer":
        fraction = float(argv[2]) if len(argv) == 3 else 1.0
        print(json.dumps({argv[1]: fraction}))
        return 0
    return _usage(__doc__.split("Usage:")[1].strip())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
