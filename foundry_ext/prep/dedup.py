"""Exact and near-duplicate detection (MinHash + LSH), split so it parallelises and stays
deterministic:

- workers compute per document an exact key (xxh3-128 of the normalized text) and, for
  near-dedup, the MinHash signature's LSH band keys (``MinHasher``);
- the main process walks documents in input order and keeps the first of each group
  (``DedupIndex``), so the result does not depend on the number of processes.

Normalization for exact dedup: NFKC, lower case, runs of whitespace -> one space, stripped.
Near-dedup shingles: word n-grams (default 5) over lower-cased ``\\w+`` words. A document is a
near-duplicate when one of its LSH bands equals a band of an earlier kept document (the
usual LSH candidate rule, as in datasketch / text-dedup; no pairwise verification). Bands
and rows come from the Jaccard threshold the same way datasketch picks them (minimising
the false-positive + false-negative area).

Memory: the exact index holds one 128-bit key per kept document (~100 bytes); the LSH index
one 64-bit key per band per kept document (~100 bytes each).
"""
from __future__ import annotations

import re
import unicodedata
from typing import Optional

import numpy as np

_WS = re.compile(r'\s+')
_WORD = re.compile(r'\w+')
_C1, _C2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S27, _S30, _S31 = np.uint64(27), np.uint64(30), np.uint64(31)

if hasattr(np, 'trapezoid'):
    _trapezoid = np.trapezoid
else:   # numpy 1.x (torch 2.7 allows it) has only the old name, which numpy 2's stubs dropped
    _trapezoid = np.trapz  # type: ignore[attr-defined]


def normalize(text: str) -> str:
    return _WS.sub(' ', unicodedata.normalize('NFKC', text).lower()).strip()


def exact_key(text: str) -> int:
    import xxhash
    return xxhash.xxh3_128_intdigest(normalize(text).encode('utf-8', 'surrogatepass'))


def optimal_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising the area of false positives
    below ``threshold`` plus false negatives above it (equal weights)."""
    if not 0 < threshold < 1:
        raise ValueError('threshold must be in (0, 1)')
    best, best_err = (1, num_perm), float('inf')
    s_lo = np.linspace(0, threshold, 512)
    s_hi = np.linspace(threshold, 1, 512)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = _trapezoid(1 - (1 - s_lo ** r) ** b, s_lo)
            fn = _trapezoid((1 - s_hi ** r) ** b, s_hi)
            err = 0.5 * fp + 0.5 * fn
            if err < best_err - 1e-12:
                best, best_err = (b, r), err
    return best


class MinHasher:
    """Band keys of the MinHash signature of a text (deterministic for a given seed)."""

    def __init__(self, num_perm: int = 128, threshold: float = 0.8, ngram: int = 5, seed: int = 1,
                 bands: Optional[int] = None, rows: Optional[int] = None):
        self.num_perm, self.ngram, self.threshold = num_perm, ngram, threshold
        if bands is None or rows is None:
            bands, rows = optimal_bands(threshold, num_perm)
        self.bands, self.rows = bands, rows
        rng = np.random.Generator(np.random.PCG64(seed))
        # one splitmix64-finalised hash per permutation: h_i(x) = mix(x ^ seed_i)
        self.seeds = rng.integers(1, 1 << 63, num_perm, dtype=np.uint64)
        self.mix = rng.integers(1, 1 << 63, rows, dtype=np.uint64) | np.uint64(1)
        self.ngram_mult = rng.integers(1, 1 << 63, ngram, dtype=np.uint64) | np.uint64(1)

    def shingles(self, text: str) -> np.ndarray:
        import xxhash
        h = xxhash.xxh3_64_intdigest
        words = _WORD.findall(text.lower())
        if not words:
            words = [text.strip().lower()]
        w = np.fromiter((h(x) for x in words), np.uint64, count=len(words))
        n = min(self.ngram, len(w))
        m = len(w) - n + 1
        key = np.zeros(m, np.uint64)
        for k in range(n):
            key += w[k:k + m] * self.ngram_mult[k]
        key ^= key >> np.uint64(31)
        return np.unique(key)

    def signature(self, text: str) -> np.ndarray:
        x = self.shingles(text)
        sig = np.full(self.num_perm, np.iinfo(np.uint64).max, np.uint64)
        for i in range(0, len(x), 1024):
            v = x[i:i + 1024, None] ^ self.seeds[None, :]
            v ^= v >> _S30
            v *= _C1
            v ^= v >> _S27
            v *= _C2
            v ^= v >> _S31
            np.minimum(sig, v.min(axis=0), out=sig)
        return sig

    def band_keys(self, text: str) -> np.ndarray:
        sig = self.signature(text)[:self.bands * self.rows].reshape(self.bands, self.rows)
        keys = (sig * self.mix[None, :]).sum(axis=1, dtype=np.uint64)
        keys ^= keys >> np.uint64(29)
        return keys


class DedupIndex:
    """First-seen-wins exact and LSH indexes (used in the main process, in input order)."""

    def __init__(self, bands: int = 0):
        self.exact: set[int] = set()
        self.lsh: list[set[int]] = [set() for _ in range(bands)]

    def seen_exact(self, key: int) -> bool:
        if key in self.exact:
            return True
        self.exact.add(key)
        return False

    def seen_near(self, band_keys: np.ndarray) -> bool:
        keys = band_keys.tolist()
        if any(k in s for k, s in zip(keys, self.lsh)):
            return True
        for k, s in zip(keys, self.lsh):
            s.add(k)
        return False
