#!/usr/bin/env python
"""Merge two SFT datasets (original + synthetic) into train_sft/test_sft, deduplicated and
decontaminated. Step 5 of the LlamaDuo loop.

Example:
  python dataset_merge.py --from-config config/dataset_merge.yaml --second-ds-id outputs/synth
"""
from src.config import parse_config
from src.errors import EXIT_CODES_HELP, run_main
from src.logging_setup import setup_logging


def _main() -> int:
    from src.pipeline.dataset_merge import MergeArgs, main

    (args,) = parse_config(MergeArgs, description=__doc__, epilog=EXIT_CODES_HELP)
    return main(args)


if __name__ == "__main__":
    setup_logging()
    run_main(_main)
