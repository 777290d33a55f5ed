"""Heuristic document quality filters in the style of Gopher (Rae et al. 2021, appendix A) and
RefinedWeb (Penedo et al. 2023).

Every rule is off unless its threshold is set; ``QualityConfig.preset('gopher')`` sets the
published Gopher values. ``check(text)`` returns the name of the first rule a document fails
(that name is the key of the kept/dropped report) or None.

Definitions (words = whitespace-separated tokens, lines = ``\\n``-separated, non-empty):
- ``min/max_chars``, ``min/max_words``: length bounds.
- ``mean_word_len``: mean characters per word within [min, max].
- ``symbol_ratio``: ('#' + '...' + '…' occurrences) / words <= max.
- ``non_alpha_ratio``: non-alphabetic fraction of the non-whitespace characters <= max.
- ``alpha_words``: fraction of words containing a letter >= min.
- ``stop_words``: at least N of the English stop words (the, be, to, of, and, that, have, with).
- ``bullet_lines`` / ``ellipsis_lines``: fraction of lines starting with a bullet / ending
  with an ellipsis <= max.
- ``dup_lines`` / ``dup_paras``: fraction of lines / paragraphs that repeat an earlier one;
  ``dup_line_chars`` / ``dup_para_chars``: the characters in them over all characters.
- ``top_ngram`` (n = 2..4): characters of the most frequent *repeated* word n-gram (times
  its count) over the characters of all words.
- ``dup_ngram`` (n = 5..10): characters of words covered by a repeated occurrence of some
  n-gram over the characters of all words (overlaps counted once).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import numpy as np

from foundry_ext.errors import UserError

STOP_WORDS = frozenset({'the', 'be', 'to', 'of', 'and', 'that', 'have', 'with'})
BULLETS = ('•', '●', '○', '▪', '◦', '‣', '⁃', '-', '*', '·')
_PARA = re.compile(r'\n\s*\n')

GOPHER_TOP_NGRAM = {2: 0.20, 3: 0.18, 4: 0.16}
GOPHER_DUP_NGRAM = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


@dataclass
class QualityConfig:
    min_chars: Optional[int] = None
    max_chars: Optional[int] = None
    min_words: Optional[int] = None
    max_words: Optional[int] = None
    min_mean_word_len: Optional[float] = None
    max_mean_word_len: Optional[float] = None
    max_symbol_ratio: Optional[float] = None
    max_non_alpha_ratio: Optional[float] = None
    min_alpha_words: Optional[float] = None
    min_stop_words: Optional[int] = None
    max_bullet_lines: Optional[float] = None
    max_ellipsis_lines: Optional[float] = None
    max_dup_line_frac: Optional[float] = None
    max_dup_line_char_frac: Optional[float] = None
    max_dup_para_frac: Optional[float] = None
    max_dup_para_char_frac: Optional[float] = None
    max_top_ngram_frac: dict = field(default_factory=dict)   # {n: max fraction}
    max_dup_ngram_frac: dict = field(default_factory=dict)   # {n: max fraction}

    @classmethod
    def preset(cls, name: str) -> QualityConfig:
        if name == 'gopher':
            return cls(min_words=50, max_words=100_000, min_mean_word_len=3, max_mean_word_len=10,
                       max_symbol_ratio=0.1, min_alpha_words=0.8, min_stop_words=2,
                       max_bullet_lines=0.9, max_ellipsis_lines=0.3, max_dup_line_frac=0.3,
                       max_dup_line_char_frac=0.2, max_dup_para_frac=0.3, max_dup_para_char_frac=0.2,
                       max_top_ngram_frac=dict(GOPHER_TOP_NGRAM), max_dup_ngram_frac=dict(GOPHER_DUP_NGRAM))
        if name in ('none', ''):
            return cls()
        raise UserError(f'--quality {name!r} is not a preset; use gopher (or set single thresholds)')

    def rules(self) -> list[str]:
        """Names of the enabled rules, in the order ``check`` applies them."""
        c = self
        on = {
            'min_chars': c.min_chars is not None, 'max_chars': c.max_chars is not None,
            'non_alpha_ratio': c.max_non_alpha_ratio is not None, 'min_words': c.min_words is not None,
            'max_words': c.max_words is not None,
            'mean_word_len': c.min_mean_word_len is not None or c.max_mean_word_len is not None,
            'symbol_ratio': c.max_symbol_ratio is not None, 'alpha_words': c.min_alpha_words is not None,
            'stop_words': c.min_stop_words is not None, 'bullet_lines': c.max_bullet_lines is not None,
            'ellipsis_lines': c.max_ellipsis_lines is not None, 'dup_lines': c.max_dup_line_frac is not None,
            'dup_line_chars': c.max_dup_line_char_frac is not None, 'dup_paras': c.max_dup_para_frac is not None,
            'dup_para_chars': c.max_dup_para_char_frac is not None, 'top_ngram': bool(c.max_top_ngram_frac),
            'dup_ngram': bool(c.max_dup_ngram_frac)}
        return [k for k, v in on.items() if v]

    def enabled(self) -> bool:
        return any(v not in (None, {}) for v in asdict(self).values())

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if v not in (None, {})}
        for k in ('max_top_ngram_frac', 'max_dup_ngram_frac'):
            if k in d:
                d[k] = {str(n): v for n, v in sorted(d[k].items())}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> QualityConfig:
        d = dict(d)
        for k in ('max_top_ngram_frac', 'max_dup_ngram_frac'):
            if k in d:
                d[k] = {int(n): float(v) for n, v in d[k].items()}
        return cls(**d)

    def update(self, **overrides) -> QualityConfig:
        names = {f.name for f in fields(self)}
        for k, v in overrides.items():
            if k not in names:
                raise ValueError(k)
            if v is not None and v != {}:
                setattr(self, k, v)
        return self


def parse_ngram_thresholds(text: Optional[str], flag: str) -> dict:
    """'2:0.2,3:0.18' -> {2: 0.2, 3: 0.18}."""
    if not text:
        return {}
    out = {}
    for part in text.split(','):
        n, sep, v = part.partition(':')
        try:
            if not sep:
                raise ValueError
            out[int(n)] = float(v)
        except ValueError:
            raise UserError(f'{flag} wants n:fraction pairs like 2:0.2,3:0.18, got {text!r}') from None
        if int(n) < 1 or not 0 <= float(v) <= 1:
            raise UserError(f'{flag}: n must be >= 1 and the fraction in [0, 1], got {part!r}')
    return out


def _dup_fracs(items: list[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier one, their chars over all chars)."""
    seen: set[str] = set()
    dup = dup_chars = total = 0
    for it in items:
        total += len(it)
        if it in seen:
            dup += 1
            dup_chars += len(it)
        else:
            seen.add(it)
    return dup / len(items), (dup_chars / total if total else 0.0)


_MULT = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                  0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9,
                  0x2545F4914F6CDD1D, 0x9FB21C651E98DF25], dtype=np.uint64)


def _ngram_keys(ids: np.ndarray, n: int) -> np.ndarray:
    m = len(ids) - n + 1
    key = np.zeros(m, np.uint64)
    for k in range(n):
        key += ids[k:k + m] * _MULT[k]
    return key


class QualityFilter:
    def __init__(self, cfg: QualityConfig):
        self.c = cfg
        self.need_words = any(getattr(cfg, k) is not None for k in (
            'min_words', 'max_words', 'min_mean_word_len', 'max_mean_word_len', 'max_symbol_ratio',
            'min_alpha_words', 'min_stop_words')) or bool(cfg.max_top_ngram_frac or cfg.max_dup_ngram_frac)

    def check(self, text: str) -> Optional[str]:
        c = self.c
        n_chars = len(text)
        if c.min_chars is not None and n_chars < c.min_chars:
            return 'min_chars'
        if c.max_chars is not None and n_chars > c.max_chars:
            return 'max_chars'
        if c.max_non_alpha_ratio is not None:
            compact = ''.join(text.split())
            if compact:
                alpha = sum(1 for ch in compact if ch.isalpha())
                if 1 - alpha / len(compact) > c.max_non_alpha_ratio:
                    return 'non_alpha_ratio'
        if self.need_words:
            words = text.split()
            n = len(words)
            if c.min_words is not None and n < c.min_words:
                return 'min_words'
            if c.max_words is not None and n > c.max_words:
                return 'max_words'
            if n == 0:
                return 'min_words' if c.min_words else None
            wlen = np.fromiter(map(len, words), np.int64, count=n)
            mean = wlen.mean()
            if c.min_mean_word_len is not None and mean < c.min_mean_word_len:
                return 'mean_word_len'
            if c.max_mean_word_len is not None and mean > c.max_mean_word_len:
                return 'mean_word_len'
            if c.max_symbol_ratio is not None:
                sym = text.count('#') + text.count('...') + text.count('…')
                if sym / n > c.max_symbol_ratio:
                    return 'symbol_ratio'
            if c.min_alpha_words is not None:
                alpha_words = sum(1 for w in words if any(ch.isalpha() for ch in w))
                if alpha_words / n < c.min_alpha_words:
                    return 'alpha_words'
            if c.min_stop_words is not None:
                if len(STOP_WORDS.intersection(w.lower() for w in words)) < c.min_stop_words:
                    return 'stop_words'
        if c.max_bullet_lines is not None or c.max_ellipsis_lines is not None or \
                c.max_dup_line_frac is not None or c.max_dup_line_char_frac is not None:
            lines = [ln.strip() for ln in text.split('\n')]
            lines = [ln for ln in lines if ln]
            if lines:
                if c.max_bullet_lines is not None and \
                        sum(ln.startswith(BULLETS) for ln in lines) / len(lines) > c.max_bullet_lines:
                    return 'bullet_lines'
                if c.max_ellipsis_lines is not None and \
                        sum(ln.endswith(('...', '…')) for ln in lines) / len(lines) > c.max_ellipsis_lines:
                    return 'ellipsis_lines'
                if c.max_dup_line_frac is not None or c.max_dup_line_char_frac is not None:
                    frac, char_frac = _dup_fracs(lines)
                    if c.max_dup_line_frac is not None and frac > c.max_dup_line_frac:
                        return 'dup_lines'
                    if c.max_dup_line_char_frac is not None and char_frac > c.max_dup_line_char_frac:
                        return 'dup_line_chars'
        if c.max_dup_para_frac is not None or c.max_dup_para_char_frac is not None:
            paras = [p.strip() for p in _PARA.split(text)]
            paras = [p for p in paras if p]
            if paras:
                frac, char_frac = _dup_fracs(paras)
                if c.max_dup_para_frac is not None and frac > c.max_dup_para_frac:
                    return 'dup_paras'
                if c.max_dup_para_char_frac is not None and char_frac > c.max_dup_para_char_frac:
                    return 'dup_para_chars'
        if c.max_top_ngram_frac or c.max_dup_ngram_frac:
            reason = self._ngram_rules(words, wlen)
            if reason:
                return reason
        return None

    def _ngram_rules(self, words: list[str], wlen: np.ndarray) -> Optional[str]:
        c = self.c
        vocab: dict[str, int] = {}
        ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), np.uint64, count=len(words))
        total = float(wlen.sum())
        csum = np.concatenate([[0], np.cumsum(wlen)])
        for n, limit in sorted(c.max_top_ngram_frac.items()):
            if len(words) < n:
                continue
            keys = _ngram_keys(ids, n)
            uniq, first, counts = np.unique(keys, return_index=True, return_counts=True)
            j = int(np.argmax(counts))
            if counts[j] > 1:
                i = first[j]
                chars = (csum[i + n] - csum[i]) * counts[j]
                if chars / total > limit:
                    return 'top_ngram'
        for n, limit in sorted(c.max_dup_ngram_frac.items()):
            if len(words) < n:
                continue
            keys = _ngram_keys(ids, n)
            _, first = np.unique(keys, return_index=True)
            repeat = np.ones(len(keys), bool)
            repeat[first] = False
            if not repeat.any():
                continue
            starts = np.flatnonzero(repeat)
            cover = np.zeros(len(words) + 1, np.int64)
            np.add.at(cover, starts, 1)
            np.add.at(cover, starts + n, -1)
            covered = np.cumsum(cover[:-1]) > 0
            if wlen[covered].sum() / total > limit:
                return 'dup_ngram'
        return None
