"""Step 3 of LlamaDuo: judge the small model's responses against the reference answers.

Exit codes: 0 qualified, 3 completed but not qualified, 1 run failed, 2 bad input.
See docs/evaluation.md.
"""
from llamaduo.cli import evaluation

if __name__ == "__main__":
    evaluation()
