"""Step 2 of LlamaDuo: batch inference with the fine-tuned model. See docs/batch_inference.md."""
from src.errors import run_main
from src.pipeline import batch_inference

if __name__ == "__main__":
    run_main(lambda: batch_inference.main())
