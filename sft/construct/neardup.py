"""Near-duplicate detection: MinHash LSH proposes candidates, ROUGE-L decides.

An all-pairs ROUGE-L loop over 10k instructions is ~50M LCS runs. Here each text is tokenised once
(the CJK-keeping ROUGE tokenizer: words, and each CJK character a token), shingled into token
bigrams, and MinHashed (96 functions, 32 bands x 3 rows). Candidates sharing a band are pre-filtered
by their MinHash-estimated Jaccard similarity (vectorised), and only the survivors get an exact
ROUGE-L F1 (LCS on the cached tokens; the same number rouge_score gives with that tokenizer).

A pair with bigram Jaccard 0.4 becomes a candidate with probability 1-(1-0.4^3)^32 = 0.88, at 0.5
with 0.99; ROUGE-L > 0.7 pairs (e.g. one word of ten changed) sit well above that.
"""

from __future__ import annotations

import zlib

import numpy as np

from ..text import cjk_tokens

_PRIME = (1 << 61) - 1


def tokens(text: str) -> list[str]:
    return cjk_tokens(text)


def shingles(toks: list[str]) -> np.ndarray:
    if len(toks) < 2:
        grams = toks or [""]
    else:
        grams = [a + "\x00" + b for a, b in zip(toks, toks[1:])]
    return np.fromiter({zlib.crc32(g.encode("utf-8")) for g in grams}, dtype=np.uint64)


def rouge_l_f1(a: list[str], b: list[str]) -> float:
    """ROUGE-L F1 of two token lists (LCS by dynamic programming)."""
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else (prev[j + 1] if prev[j + 1] > cur[j] else cur[j]))
        prev = cur
    lcs = prev[-1]
    if not lcs:
        return 0.0
    p, r = lcs / len(b), lcs / len(a)
    return 2 * p * r / (p + r)


class NearDupIndex:
    """Add texts one by one; `query` returns the highest ROUGE-L F1 against indexed texts (and which)."""

    def __init__(self, bands: int = 32, rows: int = 3, seed: int = 0, min_jaccard: float = 0.2):
        rng = np.random.default_rng(seed)
        self.bands, self.rows = bands, rows
        k = bands * rows
        self.a = rng.integers(1, _PRIME, size=k, dtype=np.uint64)
        self.b = rng.integers(0, _PRIME, size=k, dtype=np.uint64)
        self.min_jaccard = min_jaccard
        self.buckets: list[dict] = [dict() for _ in range(bands)]
        self.texts: list[str] = []
        self.toks: list[list[str]] = []
        self.sigs = np.zeros((1024, k), dtype=np.uint64)
        self.candidates_checked = 0

    def signature(self, text: str) -> tuple[np.ndarray, list[str]]:
        toks = tokens(text)
        sh = shingles(toks)
        with np.errstate(over="ignore"):  # (a*x + b) mod 2^64: wrap-around is the hash
            sig = (np.outer(self.a, sh) + self.b[:, None]).min(axis=1)
        return sig, toks

    def _keys(self, sig: np.ndarray) -> list[bytes]:
        return [sig[i * self.rows: (i + 1) * self.rows].tobytes() for i in range(self.bands)]

    def query(self, text: str, sig=None) -> tuple[float, int | None]:
        sig, toks = self.signature(text) if sig is None else sig
        cand: set[int] = set()
        for band, key in zip(self.buckets, self._keys(sig)):
            cand.update(band.get(key, ()))
        if not cand:
            return 0.0, None
        ids = np.fromiter(cand, dtype=np.int64)
        est = (self.sigs[ids] == sig).mean(axis=1)
        best, which = 0.0, None
        for j in ids[est >= self.min_jaccard]:
            self.candidates_checked += 1
            score = rouge_l_f1(self.toks[j], toks)
            if score > best:
                best, which = score, int(j)
        return best, which

    def add(self, text: str, sig=None) -> int:
        sig, toks = self.signature(text) if sig is None else sig
        idx = len(self.texts)
        if idx == len(self.sigs):
            self.sigs = np.concatenate([self.sigs, np.zeros_like(self.sigs)])
        self.sigs[idx] = sig
        self.texts.append(text)
        self.toks.append(toks)
        for band, key in zip(self.buckets, self._keys(sig)):
            band.setdefault(key, []).append(idx)
        return idx


def dedupe_near(texts: list[str], threshold: float = 0.7, seed: int = 0,
                exempt: set[int] | frozenset = frozenset()) -> tuple[list[int], list[tuple[int, int, float]]]:
    """Indices to keep (first of each near-duplicate group, in order) and the (dropped, kept, score) pairs.

    Texts whose index is in `exempt` are indexed first and never dropped, so every other text is
    compared against all of them (build-data: template prompts differ only in filled-in values)."""
    index = NearDupIndex(seed=seed)
    order = sorted(range(len(texts)), key=lambda i: i not in exempt)  # stable: exempt first, else in order
    keep, dropped = [], []
    kept_ids: list[int] = []  # index position -> text id
    for i in order:
        sig = index.signature(texts[i])
        if i not in exempt:
            score, j = index.query(texts[i], sig)
            if j is not None and score > threshold:
                dropped.append((i, kept_ids[j], score))
                continue
        index.add(texts[i], sig)
        kept_ids.append(i)
        keep.append(i)
    return sorted(keep), dropped
