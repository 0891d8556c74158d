"""Merge two SFT datasets (original + synthetic) into train_sft/test_sft, deduplicated and
decontaminated. Step 5 of the LlamaDuo loop.

Example:
  python dataset_merge.py --from-config config/dataset_merge.yaml --second-ds-id outputs/synth
"""
from llamaduo.cli import dataset_merge

if __name__ == "__main__":
    dataset_merge()
