"""Step 3 of LlamaDuo: judge the small model's responses against the reference answers.

Exit codes: 0 qualified, 3 completed but not qualified, 1 run failed, 2 bad input.
See docs/evaluation.md.
"""
from src.errors import run_main
from src.pipeline.evaluation import main

if __name__ == "__main__":
    run_main(main)
