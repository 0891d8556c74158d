"""Step 4 of the LlamaDuo loop: synthetic pairs, validated, deduplicated and decontaminated.

    python data_gen.py --from-config config/synth_data_gen.yaml     (see docs/data_gen.md)
"""
from src.errors import run_main

if __name__ == "__main__":
    from src.pipeline import data_gen

    run_main(data_gen.main)
