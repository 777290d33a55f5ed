"""Packing: documents' tokens -> fixed-length rows of ``concat_tokens`` for one (domain, split).

Two modes, as LLM Foundry's ``concat_tokens`` conversion:
- wrap (default): the token stream is cut every ``L`` tokens; a document may span two rows,
  the tail shorter than one row is dropped at the end (``dropped_tail_tokens``);
- ``no_wrap``: a document that does not fit the rest of the current row is truncated there
  (``truncated_tokens``) and the next document starts a new row.

The rows go to a ``TokenMDSWriter``; the packer also counts unigrams (for the baselines),
documents, samples and the source files that contributed.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from foundry_ext.prep.mds_writer import TokenMDSWriter


class Packer:
    """Documents' tokens -> rows of ``L`` tokens for one (domain, split)."""

    def __init__(self, writer: TokenMDSWriter, L: int, vocab: int, dtype: Any, no_wrap: bool):
        self.w, self.L, self.no_wrap = writer, L, no_wrap
        self.left = np.empty(0, dtype)              # tokens waiting for the next row
        self.counts = np.zeros(vocab, np.int64)     # unigram counts of the written rows
        self.docs = self.samples = self.truncated = 0
        self.files: set[str] = set()                # source names that contributed documents

    def _emit(self, rows: np.ndarray) -> None:
        if len(rows):
            self.w.write_rows(rows)
            self.counts += np.bincount(rows.ravel(), minlength=len(self.counts))
            self.samples += len(rows)

    def add(self, toks: np.ndarray, lens: np.ndarray) -> None:
        """Append documents: ``toks`` is their tokens concatenated, ``lens`` each one's length."""
        L = self.L
        if not self.no_wrap:
            buf = np.concatenate((self.left, toks)) if len(self.left) else toks
            n = len(buf) // L
            self._emit(buf[:n * L].reshape(n, L))
            self.left = buf[n * L:].copy()
            return
        rows = []
        off = 0
        left = self.left
        for n in lens.tolist():
            seg = toks[off:off + n]
            off += n
            space = L - len(left)
            if n < space:
                left = np.concatenate((left, seg))
                continue
            rows.append(np.concatenate((left, seg[:space])))
            self.truncated += n - space
            left = left[:0]
        self.left = left
        if rows:
            self._emit(np.stack(rows))
