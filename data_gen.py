"""Step 4 of the LlamaDuo loop: synthetic pairs, validated, deduplicated and decontaminated.

python data_gen.py --from-config config/synth_data_gen.yaml     (see docs/data_gen.md)
"""
from llamaduo.cli import data_gen

if __name__ == "__main__":
    data_gen()
