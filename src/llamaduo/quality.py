"""Quality filters for synthetic pairs: exact and near duplicates, and near copies of test prompts.

Why: training on copies of the test set inflates every later evaluation score, and many
near-copies of one example waste budget and skew the data. Candidates come from MinHash LSH
and every drop is verified with the exact Jaccard of word n-gram shingles, so hashing never
drops a pair by mistake. The decision order and thresholds: docs/data_gen.md (Quality filters).
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Hashable, Iterable, NamedTuple, Sequence

import numpy as np
import xxhash
from datasketch import MinHash, MinHashLSH
from tqdm.auto import tqdm

from llamaduo.data import normalize_text  # shared, so data_gen and dataset_merge agree on "the same text"

REASON_NEAR_TEST = "test_contamination"  # the value is the data contract (summary.json, `rejected`)
REASON_EXACT_TRAIN = "exact_duplicate_of_train"
REASON_EXACT_NEW = "exact_duplicate_in_new"
REASON_NEAR_TRAIN = "near_duplicate_of_train"
REASON_NEAR_NEW = "near_duplicate_in_new"

_WORD = re.compile(r"\w+", re.UNICODE)
_SCHEME = "affine32"  # explicit, so signatures do not change if datasketch's default does
# How far below the decision threshold the LSH candidate index is tuned, and how strongly it
# favours recall over precision. Exact Jaccard verification removes the extra candidates.
_LSH_MARGIN = 0.1
_LSH_WEIGHTS = (0.1, 0.9)


def _words(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation and spacing never make two texts differ."""
    return _WORD.findall(unicodedata.normalize("NFKC", text or "").casefold())


def shingle_hashes(text: str, ngram_size: int) -> np.ndarray:
    """Sorted unique 32-bit hashes of the word n-grams of `text` (empty for no words).

    xxhash is used (not Python's `hash`) because it is stable across processes, so a
    rerun makes the same decisions.
    """
    toks = _words(text)
    if not toks:
        return np.empty(0, dtype=np.uint32)
    n = min(ngram_size, len(toks))
    grams = {" ".join(toks[i : i + n]) for i in range(len(toks) - n + 1)}
    hashes = (xxhash.xxh32_intdigest(g.encode()) for g in grams)
    return np.unique(np.fromiter(hashes, dtype=np.uint32, count=len(grams)))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique hash arrays."""
    if a.size == 0 or b.size == 0:
        return 0.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds and MinHash parameters (all exposed as data_gen config keys)."""

    near_dup_threshold: float = 0.8
    decontam_threshold: float = 0.6
    ngram_size: int = 3
    num_perm: int = 64
    seed: int = 1

    def validate(self) -> list[str]:
        """Return human-readable problems (empty when valid); the stage raises UsageError."""
        problems = []
        for name in ("near_dup_threshold", "decontam_threshold"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                problems.append(f"{name} must be in (0, 1], got {value}")
        if self.ngram_size < 1:
            problems.append(f"ngram_size must be >= 1, got {self.ngram_size}")
        if self.num_perm < 16:
            problems.append(f"num_perm must be >= 16, got {self.num_perm}")
        return problems


class Verdict(NamedTuple):
    """The decision for one text. `match` is the key of the text it collided with."""

    keep: bool
    reason: str | None = None
    match: Hashable | None = None
    similarity: float | None = None

    def describe(self) -> str:
        """One line for the `rejected` split, e.g. 'near_duplicate_of_train: 0.86 with train:12'."""
        if self.keep:
            return "kept"
        sim = "" if self.similarity is None else f" (jaccard {self.similarity:.2f})"
        return f"{self.reason}: matches {self.match}{sim}"


class _Index:
    """A MinHashLSH candidate index plus the exact shingle sets needed for verification."""

    def __init__(self, threshold: float, cfg: QualityConfig) -> None:
        self.threshold = threshold
        self.cfg = cfg
        self.lsh = MinHashLSH(
            threshold=max(0.05, threshold - _LSH_MARGIN), num_perm=cfg.num_perm, weights=_LSH_WEIGHTS
        )
        self.shingles: dict[Hashable, np.ndarray] = {}

    def insert(self, key: Hashable, mh: MinHash, sh: np.ndarray) -> None:
        self.lsh.insert(key, mh, check_duplication=False)
        self.shingles[key] = sh

    def best_match(self, mh: MinHash, sh: np.ndarray) -> tuple[Hashable, float] | None:
        """The most similar indexed text at or above the threshold, verified exactly."""
        best: tuple[Hashable, float] | None = None
        for key in self.lsh.query(mh):
            sim = jaccard(sh, self.shingles[key])
            if sim >= self.threshold and (best is None or sim > best[1]):
                best = (key, sim)
        return best


class QualityFilter:
    """Stateful duplicate and near-test-duplicate removal over successive batches of new texts.

    `train` and `test` are (key, text) pairs; keys name the matched row in the verdicts
    (use e.g. 'train:<prompt_id>'). Train texts are always kept and only serve as
    references; new texts that survive are added to the index.
    """

    def __init__(
        self,
        cfg: QualityConfig = QualityConfig(),
        train: Iterable[tuple[Hashable, str]] = (),
        test: Iterable[tuple[Hashable, str]] = (),
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.progress = progress
        self.counts: Counter[str] = Counter()
        self._exact_train: dict[str, Hashable] = {}
        self._exact_new: dict[str, Hashable] = {}
        self._exact_test: dict[str, Hashable] = {}
        self._dups = _Index(cfg.near_dup_threshold, cfg)
        self._test = _Index(cfg.decontam_threshold, cfg)
        self._train_keys: set[Hashable] = set()
        self._auto_key = 0
        self._add_references(list(test), self._test, self._exact_test, None, "test prompts")
        self._add_references(list(train), self._dups, self._exact_train, self._train_keys, "train rows")

    def _signatures(self, texts: Sequence[str], desc: str) -> tuple[list[MinHash], list[np.ndarray]]:
        """Shingle and MinHash a batch (datasketch's bulk path reuses the permutations)."""
        shingles = [
            shingle_hashes(t, self.cfg.ngram_size)
            for t in tqdm(texts, desc=f"shingling {desc}", disable=not self.progress or len(texts) < 1000)
        ]
        mhs = MinHash.bulk(
            shingles, num_perm=self.cfg.num_perm, seed=self.cfg.seed, scheme=_SCHEME, hashfunc=int
        )
        return mhs, shingles

    def _add_references(
        self,
        rows: list[tuple[Hashable, str]],
        index: _Index,
        exact: dict[str, Hashable],
        keyset: set[Hashable] | None,
        desc: str,
    ) -> None:
        if not rows:
            return
        mhs, shingles = self._signatures([t for _, t in rows], desc)
        with index.lsh.insertion_session() as session:
            for (key, text), mh, sh in zip(rows, mhs, shingles):
                exact.setdefault(normalize_text(text or ""), key)
                if key in index.shingles or sh.size == 0:
                    continue  # a repeated reference row adds nothing
                session.insert(key, mh, check_duplication=False)
                index.shingles[key] = sh
                if keyset is not None:
                    keyset.add(key)

    def _next_key(self) -> str:
        self._auto_key += 1
        return f"new:{self._auto_key - 1}"

    def check(self, texts: Sequence[str]) -> list[Verdict]:
        """Decide keep/drop for each text, in order; kept texts join the index (as `new:<n>`)."""
        keys = [self._next_key() for _ in texts]
        mhs, shingles = self._signatures(texts, "new texts")
        verdicts = []
        bar = tqdm(
            zip(keys, texts, mhs, shingles), total=len(texts), desc="duplicate + near-test-duplicate checks",
            disable=not self.progress or len(texts) < 1000,
        )
        for key, text, mh, sh in bar:
            norm = normalize_text(text or "")
            verdict = self._decide(norm, mh, sh)
            if verdict.keep:
                self._exact_new.setdefault(norm, key)
                if sh.size:
                    self._dups.insert(key, mh, sh)
            else:
                self.counts[verdict.reason] += 1
            verdicts.append(verdict)
        return verdicts

    def _decide(self, norm: str, mh: MinHash, sh: np.ndarray) -> Verdict:
        return self._near_test_duplicate(norm, mh, sh) or self._duplicate(norm, mh, sh) or Verdict(True)

    def _near_test_duplicate(self, norm: str, mh: MinHash, sh: np.ndarray) -> Verdict | None:
        """Equal to, or Jaccard >= decontam_threshold with, a test prompt: checked first."""
        if norm in self._exact_test:
            return Verdict(False, REASON_NEAR_TEST, self._exact_test[norm], 1.0)
        hit = self._test.best_match(mh, sh) if self._test.shingles else None
        return Verdict(False, REASON_NEAR_TEST, hit[0], hit[1]) if hit else None

    def _duplicate(self, norm: str, mh: MinHash, sh: np.ndarray) -> Verdict | None:
        """Exact, then near (>= near_dup_threshold), duplicate of a train row or a kept text."""
        if norm in self._exact_train:
            return Verdict(False, REASON_EXACT_TRAIN, self._exact_train[norm], 1.0)
        if norm in self._exact_new:
            return Verdict(False, REASON_EXACT_NEW, self._exact_new[norm], 1.0)
        hit = self._dups.best_match(mh, sh)
        if hit:
            reason = REASON_NEAR_TRAIN if hit[0] in self._train_keys else REASON_NEAR_NEW
            return Verdict(False, reason, hit[0], hit[1])
        return None

