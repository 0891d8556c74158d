"""Step 0 of the migration: the reference dataset from the app's prompts, answered by the service LLM.

python collect.py --from-config config/collect.yaml     (see docs/collect.md)
"""
from llamaduo.cli import collect

if __name__ == "__main__":
    collect()
