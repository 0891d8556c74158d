"""Step 2 of LlamaDuo: batch inference with the fine-tuned model. See docs/batch_inference.md.
"""
from llamaduo.cli import batch_inference

if __name__ == "__main__":
    batch_inference()
