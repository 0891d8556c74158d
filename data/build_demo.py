"""Build the demo datasets: data/demo_tickets (the loop demo) and data/demo (coding, with unit tests).

data/demo_tickets/{train_sft,test_sft}.jsonl: the loop demo's task, support tickets labelled with
one of five intents, from the seeded generator llamaduo.loop.demo_tickets (the same code the
stand-in teacher draws new pairs from). train_sft is a SMALL seed set (round 1 trains on it
alone); test_sft holds the held-out prompts, written from phrasing templates that the seed set
and the stand-in teacher never use. Checks before writing: balanced labels, no duplicate
prompt, no test prompt near a seed prompt (the same near-duplicate rule as below).

data/demo/{train_sft,test_sft}.jsonl: short Python coding tasks from data/demo/tasks.txt.

WHY a builder: the tasks are hand-written in a compact, reviewable text file; the JSON-lines
files are derived from it so that they cannot drift from the source. The jsonl files in the
repo are this script's exact output (`python data/build_demo.py --check` verifies that).

Every row carries a unit test for execution-based evaluation: `test` is `assert <C: expression>`
(with `from datetime import date` when the expression builds dates) and `entry_point` is the
function's name.

What it also checks, before writing anything:
- every reference answer passes its own test, run exactly as evaluation runs a model's answer
  (src/llamaduo/sandbox.py: the code block is extracted from the answer and run in a subprocess);
- every code block has 2-6 lines (short, consistent answers a 135M model can learn on CPU);
- no duplicate prompts, and no test prompt that is a near-duplicate of a train prompt
  (word 3-gram Jaccard >= 0.8, the same threshold the quality module uses, or a difflib
  ratio >= 0.9 on the normalized text).

Usage:
    python data/build_demo.py           # (re)write the jsonl files of both datasets
    python data/build_demo.py --check   # exit 1 if the files differ from what would be built
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE.parent)]  # the checkout's src/llamaduo, then the repo root
from llamaduo.sandbox import ExecJob, extract_code, run_many  # noqa: E402  (standard library only)
from llamaduo.loop import demo_tickets  # noqa: E402  (standard library only)

TASKS = HERE / "demo" / "tasks.txt"
OUT_DIR = HERE / "demo"
TICKETS_DIR = HERE / "demo_tickets"
PROMPT_HEAD = "Write a Python function that "
SENTENCE_HEAD = "This function "
CATEGORY = "coding"
TEST_EVERY = 5  # every fifth task (index 4, 9, ...) goes to test_sft
NEAR_DUP_JACCARD = 0.8
NEAR_DUP_RATIO = 0.9


@dataclass(frozen=True)
class Task:
    """One hand-written task as parsed from tasks.txt."""

    prompt: str
    code: str
    sentence: str
    check: str

    @property
    def response(self) -> str:
        return f"```python\n{self.code}\n```\n{self.sentence}"

    @property
    def entry_point(self) -> str:
        match = re.search(r"^def (\w+)\(", self.code, re.MULTILINE)
        if not match:
            raise ValueError(f"{self.prompt!r}: no top-level function in the code")
        return match.group(1)

    @property
    def test(self) -> str:
        """A self-contained test: it must not rely on the answer's imports."""
        imports = "from datetime import date\n" if re.search(r"\bdate\(", self.check) else ""
        return f"{imports}assert {self.check}\n"

    def job(self) -> ExecJob:
        return ExecJob(extract_code(self.response), self.test, self.entry_point)


def prompt_id_for(text: str) -> str:
    """sha256 of the stripped prompt (utf-8). Same rule as llamaduo.data.prompt_id_for.

    Duplicated here (3 lines) on purpose: the builder must run with the plain standard
    library, without the project's dependencies installed.
    """
    return hashlib.sha256(str(text).strip().encode("utf-8")).hexdigest()


def parse_tasks(path: Path) -> list[Task]:
    """Parse the blank-line separated blocks of tasks.txt (comment lines start with '#')."""
    blocks = [b for b in path.read_text(encoding="utf-8").split("\n\n") if b.strip()]
    tasks: list[Task] = []
    for block in blocks:
        lines = [ln for ln in block.splitlines() if not ln.startswith("#")]
        if not lines:
            continue
        if not (lines[0].startswith("P: ") and lines[-2].startswith("S: ") and lines[-1].startswith("C: ")):
            raise ValueError(f"malformed task block:\n{block}")
        code = "\n".join(lines[1:-2])
        tasks.append(Task(
            prompt=PROMPT_HEAD + lines[0][3:].strip(),
            code=code,
            sentence=SENTENCE_HEAD + lines[-2][3:].strip(),
            check=lines[-1][3:].strip(),
        ))
    return tasks


def verify_tasks(tasks: list[Task]) -> None:
    """Check each answer's size, then run every reference answer against its own test in the
    sandbox (concurrently); raise naming every wrong answer and why it failed."""
    for task in tasks:
        n_lines = len(task.code.splitlines())
        if not 2 <= n_lines <= 6:
            raise ValueError(f"{task.prompt!r}: code has {n_lines} lines (want 2-6)")
    results = run_many([t.job() for t in tasks])
    failed = [f"{t.prompt!r}: check failed: {t.check} ({r.reason})" for t, r in zip(tasks, results) if not r.passed]
    if failed:
        raise ValueError("\n".join(failed))


def verify_task(task: Task) -> None:
    """One task's checks (see verify_tasks)."""
    verify_tasks([task])


def _norm(text: str) -> str:
    """Lower-case, collapse whitespace and drop the shared 'Write a Python function that' head.

    WHY drop the head: every prompt starts with it, so comparing whole prompts would make
    distinct tasks ("sum of a list" vs "average of a list") look 90% similar.
    """
    text = text[len(PROMPT_HEAD):] if text.startswith(PROMPT_HEAD) else text
    return " ".join(text.lower().split())


def _shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = _norm(text).split()
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def near_duplicates(train: list[str], test: list[str]) -> list[tuple[str, str, float, float]]:
    """Pairs (test, train, jaccard, ratio) that look like the same task.

    Exact pairwise comparison (35 x 141 prompts) instead of datasketch MinHash: it is
    instant at this size and exact, and keeps the builder dependency-free.
    """
    hits = []
    train_sh = [(p, _shingles(p)) for p in train]
    for t in test:
        t_sh = _shingles(t)
        for p, p_sh in train_sh:
            jac = len(t_sh & p_sh) / len(t_sh | p_sh)
            ratio = difflib.SequenceMatcher(None, _norm(t), _norm(p)).ratio()
            if jac >= NEAR_DUP_JACCARD or ratio >= NEAR_DUP_RATIO:
                hits.append((t, p, jac, ratio))
    return hits


def to_row(task: Task) -> dict:
    """One row in the reference SFT schema: prompt, prompt_id, messages, category."""
    return {
        "prompt": task.prompt,
        "prompt_id": prompt_id_for(task.prompt),
        "messages": [
            {"role": "user", "content": task.prompt},
            {"role": "assistant", "content": task.response},
        ],
        "category": CATEGORY,
        "test": task.test,
        "entry_point": task.entry_point,
    }


def build() -> dict[str, str]:
    """Return {file name: exact jsonl text} after all checks pass."""
    tasks = parse_tasks(TASKS)
    verify_tasks(tasks)
    prompts = [_norm(t.prompt) for t in tasks]
    dupes = {p for p in prompts if prompts.count(p) > 1}
    if dupes:
        raise ValueError(f"duplicate prompts: {sorted(dupes)}")
    train = [t for i, t in enumerate(tasks) if i % TEST_EVERY != TEST_EVERY - 1]
    test = [t for i, t in enumerate(tasks) if i % TEST_EVERY == TEST_EVERY - 1]
    hits = near_duplicates([t.prompt for t in train], [t.prompt for t in test])
    if hits:
        lines = "\n".join(f"  {jac:.2f}/{ratio:.2f} {t!r} ~ {p!r}" for t, p, jac, ratio in hits)
        raise ValueError(f"test prompts near-duplicate train prompts:\n{lines}")

    def dump(rows: list[Task]) -> str:
        return "".join(json.dumps(to_row(t), ensure_ascii=False) + "\n" for t in rows)

    return {"train_sft.jsonl": dump(train), "test_sft.jsonl": dump(test)}


def build_tickets() -> dict[str, str]:
    """{file name: exact jsonl text} of data/demo_tickets, after its checks pass."""
    seed, test = demo_tickets.seed_pairs(), demo_tickets.test_pairs()
    for name, pairs in (("seed", seed), ("test", test)):
        counts = {lab: sum(p.label == lab for p in pairs) for lab in demo_tickets.LABELS}
        if max(counts.values()) - min(counts.values()) > 1:
            raise ValueError(f"{name} labels are not balanced: {counts}")
    prompts = [p.instruction for p in seed + test]
    if len({_norm(p) for p in prompts}) != len(prompts):
        raise ValueError("duplicate ticket prompts")
    # compare the tickets without the shared task header (it would make every pair look alike)
    hits = near_duplicates([demo_tickets.message_of(p.instruction) for p in seed],
                           [demo_tickets.message_of(p.instruction) for p in test])
    if hits:
        lines = "\n".join(f"  {jac:.2f}/{ratio:.2f} {t!r} ~ {p!r}" for t, p, jac, ratio in hits)
        raise ValueError(f"test tickets near-duplicate seed tickets:\n{lines}")
    return {"train_sft.jsonl": demo_tickets.to_jsonl(seed), "test_sft.jsonl": demo_tickets.to_jsonl(test)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify the files instead of writing them")
    args = parser.parse_args(argv)
    files = {OUT_DIR / n: text for n, text in build().items()}
    files |= {TICKETS_DIR / n: text for n, text in build_tickets().items()}
    if args.check:
        stale = [str(path.relative_to(HERE)) for path, text in files.items()
                 if not path.exists() or path.read_text(encoding="utf-8") != text]
        if stale:
            print(f"out of date: {stale}; run python data/build_demo.py", file=sys.stderr)
            return 1
        print("demo datasets are up to date")
        return 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}: {text.count(chr(10))} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
