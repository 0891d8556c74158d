"""src/llamaduo/quality.py: exact/near-duplicate and near-test-duplicate removal, checked against a
brute-force exact-Jaccard reference (no mocks: real datasketch MinHash/LSH)."""
from __future__ import annotations

import random

import pytest

from llamaduo.quality import (
    REASON_NEAR_TEST,
    REASON_EXACT_NEW,
    REASON_EXACT_TRAIN,
    REASON_NEAR_NEW,
    REASON_NEAR_TRAIN,
    QualityConfig,
    QualityFilter,
    jaccard,
    shingle_hashes,
)

WORDS = [f"w{i}" for i in range(3000)]


def filtered(new, train=(), test=(), cfg=QualityConfig()):
    """One QualityFilter (what data_gen builds) over one batch; references keyed train:<i> / test:<i>."""
    qf = QualityFilter(cfg, train=[(f"train:{i}", t) for i, t in enumerate(train)],
                       test=[(f"test:{i}", t) for i, t in enumerate(test)], progress=False)
    return qf.check(new)


def sim(a: str, b: str, n: int = 3) -> float:
    return jaccard(shingle_hashes(a, n), shingle_hashes(b, n))


def test_shingles_ignore_case_punctuation_and_spacing():
    assert sim("Write a Python function, that reverses a STRING!",
               "write a python function that reverses a string") == 1.0
    assert sim("alpha beta gamma delta", "epsilon zeta eta theta") == 0.0
    # texts shorter than n words still get a shingle (the whole text)
    assert shingle_hashes("hello", 3).size == 1
    assert shingle_hashes("", 3).size == 0


def test_exact_duplicates_in_new_and_of_train():
    v = filtered(
        ["Sort a list of numbers in place.", "  sort a LIST of numbers in place.  ", "Reverse a linked list."],
        train=["reverse a linked   list."],
    )
    assert v[0].keep
    assert (v[1].keep, v[1].reason, v[1].match) == (False, REASON_EXACT_NEW, "new:0")
    assert (v[2].keep, v[2].reason, v[2].match) == (False, REASON_EXACT_TRAIN, "train:0")


def test_near_duplicate_of_train_and_in_new_with_exact_similarity():
    base = "Write a program that reads a CSV file of sales and prints the total revenue per region sorted by revenue"
    near = base + " descending"  # one extra word at the end: exact Jaccard 17/18
    other = "Explain the difference between TCP and UDP with two examples each"
    v = filtered([near, other], train=[base])
    assert (v[0].keep, v[0].reason, v[0].match) == (False, REASON_NEAR_TRAIN, "train:0")
    assert v[0].similarity == pytest.approx(sim(near, base))
    assert v[1].keep
    v = filtered([base, near])
    assert (v[1].reason, v[1].match) == (REASON_NEAR_NEW, "new:0")


def test_near_test_duplicate_takes_precedence_and_names_the_test_prompt():
    test_prompt = "Write a Python function that counts the vowels in a string."
    paraphrase = "Please write a Python function that counts the vowels in a string!"
    qf = QualityFilter(
        QualityConfig(),
        train=[("train:a", paraphrase)],  # also a train duplicate: contamination must win
        test=[("test:x", test_prompt)],
        progress=False,
    )
    v = qf.check([paraphrase, "Write a shell script that backs up a directory every night at 2am."])
    assert (v[0].keep, v[0].reason, v[0].match) == (False, REASON_NEAR_TEST, "test:x")
    assert v[0].similarity >= QualityConfig().decontam_threshold
    assert v[1].keep
    assert qf.counts == {REASON_NEAR_TEST: 1} and [x.keep for x in v] == [False, True]
    assert "test:x" in v[0].describe() and REASON_NEAR_TEST in v[0].describe()


def test_state_carries_across_batches():
    qf = QualityFilter(QualityConfig(), progress=False)
    text = "Implement binary search over a sorted array and return the index or minus one"
    assert qf.check([text])[0].keep
    second = qf.check([text + " please"])[0]
    assert (second.keep, second.reason, second.match) == (False, REASON_NEAR_NEW, "new:0")
    assert qf.counts == {REASON_NEAR_NEW: 1}


def _corpus(seed: int = 3, n: int = 400) -> tuple[list[str], list[str], list[str]]:
    """Random texts plus near copies with 0-3 edits, so similarities spread around the
    thresholds (some copies fall below them on purpose)."""
    rng = random.Random(seed)

    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))

    def near(t: str) -> str:
        toks = t.split()
        for _ in range(rng.randint(0, 3)):
            toks[rng.randrange(len(toks))] = rng.choice(WORDS)
        return " ".join(toks)

    train = [text() for _ in range(100)]
    test = [text() for _ in range(60)]
    new: list[str] = []
    for _ in range(n):
        r = rng.random()
        pool = new if r < 0.15 and new else train if r < 0.25 else test if r < 0.35 else None
        new.append(near(rng.choice(pool)) if pool else text())
    return new, train, test


def _brute_force(new: list[str], train: list[str], test: list[str], cfg: QualityConfig) -> list[str | None]:
    """The same decision rule, by exhaustive exact Jaccard (the reference the LSH must match)."""
    sh = {t: shingle_hashes(t, cfg.ngram_size) for t in new + train + test}

    def close(t: str, pool: list[str], threshold: float) -> bool:
        return any(jaccard(sh[t], sh[q]) >= threshold for q in pool)

    kept: list[str] = []
    out: list[str | None] = []
    for t in new:
        if close(t, test, cfg.decontam_threshold):
            out.append(REASON_NEAR_TEST)
        elif close(t, train, cfg.near_dup_threshold):
            out.append("train")
        elif close(t, kept, cfg.near_dup_threshold):
            out.append("new")
        else:
            out.append(None)
            kept.append(t)
    return out


def test_lsh_matches_brute_force_exact_jaccard():
    cfg = QualityConfig()
    new, train, test = _corpus()
    expected = _brute_force(new, train, test, cfg)
    got = filtered(new, train, test, cfg)
    group = {REASON_NEAR_TEST: REASON_NEAR_TEST, REASON_EXACT_TRAIN: "train", REASON_NEAR_TRAIN: "train",
             REASON_EXACT_NEW: "new", REASON_NEAR_NEW: "new", None: None}
    got_groups = [group[v.reason] for v in got]
    should_drop = [i for i, e in enumerate(expected) if e is not None]
    assert len(should_drop) > 60  # the corpus really exercises the filter
    # precision is exact by construction (every drop is verified with exact Jaccard) ...
    for i, g in enumerate(got_groups):
        if g is not None:
            assert expected[i] is not None, f"dropped {i} ({got[i].describe()}) but brute force keeps it"
    # ... and the LSH candidate search finds (almost) every pair the brute force finds
    recall = sum(got_groups[i] is not None for i in should_drop) / len(should_drop)
    assert recall >= 0.97
    agree = sum(g == e for g, e in zip(got_groups, expected)) / len(new)
    assert agree >= 0.97


@pytest.mark.parametrize(
    "kwargs, message",
    [({"near_dup_threshold": 0.0}, "near_dup_threshold"), ({"decontam_threshold": 1.5}, "decontam_threshold"),
     ({"ngram_size": 0}, "ngram_size"), ({"num_perm": 4}, "num_perm")],
)
def test_config_validation(kwargs, message):
    problems = QualityConfig(**kwargs).validate()
    assert len(problems) == 1 and message in problems[0]
    assert QualityConfig().validate() == []
