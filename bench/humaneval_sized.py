"""Synthetic data the size of HumanEval through the loop, generated offline (no download).

Why synthetic: the benchmark must run anywhere, offline; what matters for memory is the shape
(120 train conversations of up to ~1k tokens, 44 test prompts asking for long code answers),
not the content. Python-looking functions with docstrings keep the tokenizer's token/char
ratio close to real code.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from llamaduo.data import prompt_id_for

_NAMES = ("values", "items", "text", "numbers", "grid", "words", "matrix", "pairs", "nodes", "limit")
_OPS = ("sorted({x})", "sum({x})", "len({x})", "max({x})", "min({x})", "list(reversed({x}))",
        "{x}[::2]", "set({x})", "[v * 2 for v in {x}]", "[v for v in {x} if v]")


def _function(rng: random.Random, index: int, lines: int) -> tuple[str, str]:
    """(stub with docstring, body): the body has `lines` statements."""
    args = rng.sample(_NAMES, 2)
    stub = (f"def task_{index}({args[0]}, {args[1]}):\n    \"\"\"Return the result of step {index} "
            f"applied to {args[0]} and {args[1]}.\n    >>> task_{index}([1, 2], 3)\n    [1, 2]\n    \"\"\"\n")
    body = []
    for k in range(lines):
        op = rng.choice(_OPS).format(x=rng.choice(args))
        body.append(f"    step_{k} = {op}  # stage {k} of the computation for {args[0]}")
    body.append(f"    return step_{lines - 1}")
    return stub, "\n".join(body) + "\n"


def rows(n: int, seed: int, min_lines: int, max_lines: int) -> list[dict]:
    """n SFT rows (prompt, prompt_id, messages, category); body length drawn per row."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        stub, body = _function(rng, seed * 1000 + i, rng.randint(min_lines, max_lines))
        prompt = f"Complete the following Python function.\n```python\n{stub}```"
        answer = f"```python\n{stub}{body}```"
        out.append({"prompt": prompt, "prompt_id": prompt_id_for(prompt), "category": "coding",
                    "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]})
    return out


def write(folder: Path, n_train: int = 120, n_test: int = 44) -> Path:
    """train_sft (up to ~1k tokens per conversation) and test_sft jsonl files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    # ~20 tokens per body line: 8..38 lines gives ~300..1000 tokens per conversation
    for split, n, seed in (("train_sft", n_train, 1), ("test_sft", n_test, 2)):
        with open(folder / f"{split}.jsonl", "w") as fh:
            for row in rows(n, seed, 8, 38):
                fh.write(json.dumps(row) + "\n")
    return folder


if __name__ == "__main__":
    import sys

    print(write(Path(sys.argv[1])))
