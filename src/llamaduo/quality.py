"""Quality filters for synthetic pairs: exact duplicates, near duplicates, test contamination.

Why this module exists: training on copies of the test set inflates every later evaluation
score, and training on many near-copies of one example wastes budget and skews the data.
The LlamaDuo paper says it deduplicates and decontaminates; the original code did neither.

How it works (one `QualityFilter` per run, stateful across generation rounds):

1. Every text is tokenised into lower-cased words and turned into a set of word n-gram
   shingles (n = `ngram_size`; texts shorter than n words become one shingle).
2. Exact duplicates are found with a dict keyed on the normalised text.
3. Near-duplicate *candidates* come from datasketch MinHash + MinHashLSH. The LSH index is
   built for a threshold below the decision threshold and weighted towards recall, so that
   pairs right at the threshold are still found (an LSH tuned at the threshold itself
   misses ~60 % of the pairs sitting exactly there).
4. Each candidate is then *verified* with the exact Jaccard similarity of the two shingle
   sets, so the decision is exact and no false positive from hashing ever drops a pair.

Decisions are made in this order, and the first that applies is the reason:
`test_contamination` (instruction near-duplicates a test prompt, threshold
`decontam_threshold`), `exact_duplicate_of_train`, `exact_duplicate_in_new`,
`near_duplicate_of_train`, `near_duplicate_in_new` (threshold `near_dup_threshold`).
Kept texts join the index, so a later round is checked against every earlier round.
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

REASON_CONTAMINATED = "test_contamination"
REASON_EXACT_TRAIN = "exact_duplicate_of_train"
REASON_EXACT_NEW = "exact_duplicate_in_new"
REASON_NEAR_TRAIN = "near_duplicate_of_train"
REASON_NEAR_NEW = "near_duplicate_in_new"
REASONS = (REASON_CONTAMINATED, REASON_EXACT_TRAIN, REASON_EXACT_NEW, REASON_NEAR_TRAIN, REASON_NEAR_NEW)

_WORD = re.compile(r"\w+", re.UNICODE)
_SCHEME = "affine32"  # explicit, so signatures do not change if datasketch's default does
# How far below the decision threshold the LSH candidate index is tuned, and how strongly it
# favours recall over precision. Exact Jaccard verification removes the extra candidates.
_LSH_MARGIN = 0.1
_LSH_WEIGHTS = (0.1, 0.9)


def _fallback_normalize(text: str) -> str:
    """Casefold + NFKC + collapsed whitespace; used only if llamaduo.data has no normalize_text."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


try:  # the shared definition, so that data_gen and dataset_merge agree on "the same text"
    from llamaduo.data import normalize_text as _normalize
except ImportError:  # llamaduo.data not written yet, or without that helper
    _normalize = _fallback_normalize


def normalize(text: str) -> str:
    """The normalised form used for exact-duplicate detection."""
    return _normalize(text or "")


def words(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation and spacing never make two texts differ."""
    return _WORD.findall(unicodedata.normalize("NFKC", text or "").casefold())


def shingle_hashes(text: str, ngram_size: int) -> np.ndarray:
    """Sorted unique 32-bit hashes of the word n-grams of `text` (empty for no words).

    xxhash is used (not Python's `hash`) because it is stable across processes, so a
    rerun makes the same decisions.
    """
    toks = words(text)
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
    """Stateful dedup + decontamination over successive batches of new texts.

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
        self.num_kept = 0
        self._exact_train: dict[str, Hashable] = {}
        self._exact_new: dict[str, Hashable] = {}
        self._exact_test: dict[str, Hashable] = {}
        self._dups = _Index(cfg.near_dup_threshold, cfg)
        self._test = _Index(cfg.decontam_threshold, cfg)
        self._train_keys: set[Hashable] = set()
        self._auto_key = 0
        self._add_references(list(test), self._test, self._exact_test, None, "test prompts")
        self._add_references(list(train), self._dups, self._exact_train, self._train_keys, "train rows")

    @property
    def num_test(self) -> int:
        return len(self._test.shingles)

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
                exact.setdefault(normalize(text), key)
                if key in index.shingles or sh.size == 0:
                    continue  # a repeated reference row adds nothing
                session.insert(key, mh, check_duplication=False)
                index.shingles[key] = sh
                if keyset is not None:
                    keyset.add(key)

    def _next_key(self) -> str:
        self._auto_key += 1
        return f"new:{self._auto_key - 1}"

    def check(self, texts: Sequence[str], keys: Sequence[Hashable] | None = None) -> list[Verdict]:
        """Decide keep/drop for each text, in order; kept texts join the index."""
        keys = list(keys) if keys is not None else [self._next_key() for _ in texts]
        if len(keys) != len(texts):
            raise ValueError("keys and texts must have the same length")
        mhs, shingles = self._signatures(texts, "new texts")
        verdicts = []
        bar = tqdm(
            zip(keys, texts, mhs, shingles), total=len(texts), desc="dedup + decontamination",
            disable=not self.progress or len(texts) < 1000,
        )
        for key, text, mh, sh in bar:
            verdict = self._decide(normalize(text), mh, sh)
            if verdict.keep:
                self._exact_new.setdefault(normalize(text), key)
                if sh.size:
                    self._dups.insert(key, mh, sh)
                self.num_kept += 1
            else:
                self.counts[verdict.reason] += 1
            verdicts.append(verdict)
        return verdicts

    def _decide(self, norm: str, mh: MinHash, sh: np.ndarray) -> Verdict:
        if norm in self._exact_test:
            return Verdict(False, REASON_CONTAMINATED, self._exact_test[norm], 1.0)
        hit = self._test.best_match(mh, sh) if self._test.shingles else None
        if hit:
            return Verdict(False, REASON_CONTAMINATED, hit[0], hit[1])
        if norm in self._exact_train:
            return Verdict(False, REASON_EXACT_TRAIN, self._exact_train[norm], 1.0)
        if norm in self._exact_new:
            return Verdict(False, REASON_EXACT_NEW, self._exact_new[norm], 1.0)
        hit = self._dups.best_match(mh, sh)
        if hit:
            reason = REASON_NEAR_TRAIN if hit[0] in self._train_keys else REASON_NEAR_NEW
            return Verdict(False, reason, hit[0], hit[1])
        return Verdict(True)


def dedup_and_decontaminate(
    new: Sequence[str],
    train: Sequence[str] = (),
    test: Sequence[str] = (),
    cfg: QualityConfig = QualityConfig(),
    progress: bool = False,
) -> list[Verdict]:
    """One-shot convenience wrapper (used by the benchmark and simple callers)."""
    qf = QualityFilter(
        cfg,
        train=((f"train:{i}", t) for i, t in enumerate(train)),
        test=((f"test:{i}", t) for i, t in enumerate(test)),
        progress=progress,
    )
    return qf.check(new)
