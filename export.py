"""After the loop: merge the adapter into its base and save a standalone model (optional GGUF).

python export.py --adapter-id outputs/demo/round_1/model --output-dir outputs/export     (see docs/export.md)
"""
from llamaduo.cli import export

if __name__ == "__main__":
    export()
