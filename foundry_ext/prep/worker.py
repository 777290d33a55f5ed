"""The worker side of the conversion engine: one ``Chunk`` of raw input -> one ``ChunkResult``.

A worker decodes the chunk (UTF-8, with the ``--encoding_errors`` policy), parses its records
(jsonl lines, text files, record batches), applies the quality filters, computes the exact
dedup key and the MinHash band keys of each kept document, and tokenizes the kept documents
into one flat token array (+BOS/EOS). The dedup decisions and the packing are the main
process's job (``pipeline.run``), in input order, so the output does not depend on how many
workers there are.

``ordered_map`` runs ``process_chunk`` over ``num_proc`` processes (or in-process for 1),
results in input order, with a bounded number of chunks in flight.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import re
import sys
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

import numpy as np

from foundry_ext.errors import UserError
from foundry_ext.prep.quality import QualityConfig
from foundry_ext.prep.sources import Chunk, domain_name

MAX_EXAMPLES = 5
_STR_CUT = re.compile(r'(?<=\S) (?=\S)')

T = TypeVar('T')
R = TypeVar('R')


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs to turn chunks into tokens; sent once to each worker process."""
    tokenizer_json: str                  # the tokenizer, serialized (``tokenizers.Tokenizer.to_str``)
    eos: int                             # id appended after each document's last piece
    bos: Optional[int]                   # id put before each document, or None (no BOS)
    dtype: str                           # numpy dtype name of the token ids (uint16 / uint32)
    text_field: str                      # jsonl: the field holding the text
    domain_field: Optional[str]          # jsonl / records: the field naming a document's domain
    encoding_errors: str                 # strict | replace | skip, for non-UTF-8 input
    strict: bool                         # a bad record is an error instead of a skip
    quality: Optional[QualityConfig]     # quality filters, None = off
    exact_dedup: bool                    # compute exact dedup keys
    near_dedup: Optional[float]          # Jaccard threshold for MinHash band keys, None = off
    minhash_perm: int                    # MinHash permutations
    minhash_ngram: int                   # MinHash word n-gram shingle size
    minhash_seed: int                    # MinHash seed
    max_piece_chars: int                 # texts longer than this are tokenized in pieces
    tokenizer_impl: str                  # auto | fast | hf (same ids, see fasttok.py)


@dataclass
class ChunkResult:
    """What a worker sends back for one chunk: the kept documents' tokens and what was dropped.

    Per-document arrays (``lens``, ``last``, ``exact``, ``bands``, ``domains``, ``names``)
    are aligned: entry ``i`` is the ``i``-th document kept by the filters of this chunk.
    """
    source: str                          # the chunk's source (file shown in messages)
    split: str                           # the output split of the chunk
    domain: str                          # the default output domain of the chunk's documents
    nbytes: int                          # raw input bytes of the chunk (for progress)
    counters: dict[str, int]             # read / empty / bad / decode_* / quality:<rule> counts
    bad_examples: list[str]              # the first few bad-record messages
    domains: Optional[list[Optional[str]]]  # per-document domain (None: use ``domain``); None if all default
    names: Optional[list[str]]           # per-document source name, None when all are ``name``
    name: str                            # the one source name when ``names`` is None
    last: np.ndarray                     # bool per document: it ends here (a long file may span chunks)
    lens: np.ndarray                     # int64 per document: its number of tokens in ``tokens``
    tokens: np.ndarray                   # all documents' tokens, concatenated (with BOS/EOS)
    exact: Optional[list[int]]           # per-document exact dedup key, None when exact dedup is off
    bands: Optional[np.ndarray]          # (docs, bands) MinHash LSH band keys, None when off or no docs
    impl: str                            # tokenizer implementation used by the worker
    fallback_docs: int                   # texts the fast tokenizer handed to ``encode_batch``


class _Bad:
    """Bad records: raise when strict, else count them and keep the first few messages."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.count = 0
        self.examples: list[str] = []

    def __call__(self, msg: str, fix: str) -> None:
        if self.strict:
            raise UserError(f'{msg}; {fix}')
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(msg)


def _split_long(text: str, limit: int) -> list[str]:
    """Cut a very long string where tokenization is unaffected (see sources.safe_cut)."""
    if len(text) <= limit:
        return [text]
    out, start = [], 0
    while len(text) - start > limit:
        end = start + limit
        last = None
        for m in _STR_CUT.finditer(text, max(start + 1, end - (1 << 16)), end):
            last = m   # the last safe cut before the limit
        cut = last.start() if last is not None else end
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


# A document as the parsers yield it: (text, domain value or None, continues an earlier piece,
# is the document's last piece, source name).
_Doc = tuple[str, Any, bool, bool, str]


class _Worker:
    """The per-process state built once from a ``WorkerConfig``: tokenizer, filters, hasher."""

    def __init__(self, cfg: WorkerConfig):
        from tokenizers import Tokenizer

        from foundry_ext.prep.fasttok import make_encoder
        self.cfg = cfg
        self.dtype = np.dtype(cfg.dtype)
        self.encode, self.impl = make_encoder(Tokenizer.from_str(cfg.tokenizer_json), self.dtype,
                                              cfg.tokenizer_impl)
        self.qf = None
        if cfg.quality is not None:
            from foundry_ext.prep.quality import QualityFilter
            self.qf = QualityFilter(cfg.quality)
        self.mh = None
        if cfg.near_dedup:
            from foundry_ext.prep.dedup import MinHasher
            self.mh = MinHasher(cfg.minhash_perm, cfg.near_dedup, cfg.minhash_ngram, cfg.minhash_seed)
        self.exact_key: Optional[Callable[[str], int]] = None
        if cfg.exact_dedup:
            from foundry_ext.prep.dedup import exact_key
            self.exact_key = exact_key

    def _decode(self, raw: bytes, where: str, counters: dict[str, int]) -> Optional[str]:
        try:
            return raw.decode('utf-8')
        except UnicodeDecodeError as e:
            mode = self.cfg.encoding_errors
            if mode == 'strict':
                raise UserError(f'{where} is not valid UTF-8 (byte {e.start}); pass '
                                '--encoding_errors replace (or skip) to convert it anyway') from None
            if mode == 'skip':
                counters['decode_skipped'] += 1
                return None
            counters['decode_replaced'] += 1
            return raw.decode('utf-8', errors='replace')

    def _jsonl_docs(self, chunk: Chunk, counters: dict[str, int], bad: _Bad) -> Iterator[_Doc]:
        field_, dfield = self.cfg.text_field, self.cfg.domain_field
        fix = 'fix or remove that line, or leave out --strict to skip such lines'
        lines: Optional[list[str]]
        try:
            lines, raw_lines = chunk.payload.decode('utf-8').split('\n'), []
        except UnicodeDecodeError:   # decode line by line, with the --encoding_errors policy
            lines, raw_lines = None, chunk.payload.split(b'\n')
        for i in range(len(lines if lines is not None else raw_lines)):
            where = f'{chunk.source}:{chunk.first + i}'
            line: Optional[str]
            if lines is not None:
                line = lines[i]
            else:
                if not raw_lines[i].strip():
                    continue
                line = self._decode(raw_lines[i], where, counters)
                if line is None:
                    counters['read'] += 1
                    continue
            if not line.strip():
                continue
            counters['read'] += 1
            try:
                obj = json.loads(line)
            except ValueError as e:   # JSONDecodeError, or e.g. an integer too long to convert
                why = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
                bad(f'{where} is not a JSON object with a "{field_}" field (not JSON: {why})', fix)
                continue
            if not isinstance(obj, dict):
                bad(f'{where} is not a JSON object with a "{field_}" field (a JSON {type(obj).__name__})', fix)
                continue
            text = obj.get(field_)
            if not isinstance(text, str):
                what = 'missing' if field_ not in obj else f'a {type(text).__name__}, not a string'
                bad(f'{where} is not a JSON object with a "{field_}" field ({what})', fix)
                continue
            yield text, (obj.get(dfield) if dfield else None), False, True, chunk.source

    def _docs_of(self, chunk: Chunk, counters: dict[str, int], bad: _Bad) -> Iterator[_Doc]:
        """(text, domain or None, cont, last, source name) for each record of a chunk."""
        if chunk.kind == 'texts':
            for name, raw, cont, last in chunk.payload:
                counters['read'] += 1
                text = self._decode(raw, name, counters)
                if text is not None:
                    yield text, None, cont, last, name
            return
        if chunk.kind == 'jsonl':
            yield from self._jsonl_docs(chunk, counters, bad)
            return
        texts, doms = chunk.payload
        field_ = self.cfg.text_field
        fix = 'fix those rows, or leave out --strict to skip them'
        for i, text in enumerate(texts):
            counters['read'] += 1
            if not isinstance(text, str):
                bad(f'{chunk.source} row {chunk.first + i} has no string "{field_}" '
                    f'({type(text).__name__})', fix)
                continue
            yield text, (doms[i] if doms is not None else None), False, True, chunk.source

    def _tokenize(self, kept_text: list[str], flags: list[tuple[bool, bool]]) -> tuple[np.ndarray, np.ndarray]:
        """(flat tokens with BOS/EOS, tokens per document); long texts in pieces, same tokens."""
        pieces: list[str] = []
        owner: list[int] = []
        for j, t in enumerate(kept_text):
            cut = _split_long(t, self.cfg.max_piece_chars)
            pieces.extend(cut)
            owner.extend([j] * len(cut))
        enc = self.encode(pieces) if pieces else []
        dtype = self.dtype
        bos = np.array([self.cfg.bos], dtype) if self.cfg.bos is not None else None
        eos = np.array([self.cfg.eos], dtype)
        parts: list[np.ndarray] = []
        lens = np.zeros(len(kept_text), np.int64)
        prev = -1
        for j, ids in zip(owner, enc):
            if j != prev:
                if prev >= 0 and flags[prev][1]:
                    parts.append(eos)
                    lens[prev] += 1
                if bos is not None and not flags[j][0]:
                    parts.append(bos)
                    lens[j] += 1
                prev = j
            parts.append(ids)
            lens[j] += len(ids)
        if prev >= 0 and flags[prev][1]:
            parts.append(eos)
            lens[prev] += 1
        tokens = np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype)
        return tokens, lens

    def process(self, chunk: Chunk) -> ChunkResult:
        counters = {'read': 0, 'decode_replaced': 0, 'decode_skipped': 0, 'empty': 0}
        bad = _Bad(self.cfg.strict)
        qf, mh, exact_key = self.qf, self.mh, self.exact_key
        kept_text: list[str] = []
        doms: list[Optional[str]] = []
        flags: list[tuple[bool, bool]] = []
        names: list[str] = []
        exact: list[int] = []
        bands: list[np.ndarray] = []
        for text, dom, cont, last, name in self._docs_of(chunk, counters, bad):
            if not text.strip():
                counters['empty'] += 1
                continue
            if qf is not None:
                reason = qf.check(text)
                if reason is not None:
                    k = f'quality:{reason}'
                    counters[k] = counters.get(k, 0) + 1
                    continue
            if exact_key is not None:
                exact.append(exact_key(text))
            if mh is not None:
                bands.append(mh.band_keys(text))
            kept_text.append(text)
            doms.append(domain_name(dom) if dom is not None else None)
            flags.append((cont, last))
            names.append(name)
        counters['bad'] = bad.count
        encoder = getattr(self.encode, '__self__', None)
        fb0 = getattr(encoder, 'fallback_docs', 0)
        tokens, lens = self._tokenize(kept_text, flags)
        uniq_doms = set(doms)
        one_domain = len(uniq_doms) == 1 and None in uniq_doms
        uniq_names = set(names)
        return ChunkResult(
            source=chunk.source, split=chunk.split, domain=chunk.domain, nbytes=chunk.nbytes,
            counters=counters, bad_examples=bad.examples,
            domains=None if one_domain or not doms else doms,
            names=names if len(uniq_names) > 1 else None, name=next(iter(uniq_names), chunk.source),
            last=np.array([f[1] for f in flags], bool), lens=lens, tokens=tokens,
            exact=exact if exact_key is not None else None,
            bands=np.stack(bands) if mh is not None and bands else None,
            impl=self.impl, fallback_docs=getattr(encoder, 'fallback_docs', 0) - fb0)


_worker: Optional[_Worker] = None   # this process's state, set by init_worker


def init_worker(cfg: WorkerConfig) -> None:
    """Build this process's tokenizer / filters / hasher (the pool initializer)."""
    global _worker
    _worker = _Worker(cfg)


def process_chunk(chunk: Chunk) -> ChunkResult:
    """One chunk -> its kept documents' tokens (call ``init_worker`` first in this process)."""
    if _worker is None:
        raise RuntimeError('process_chunk: init_worker was not called in this process')
    return _worker.process(chunk)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], num_proc: int, init: Callable[[Any], None],
                init_arg: Any, window: Optional[int] = None) -> Iterator[R]:
    """``map(fn, items)`` over ``num_proc`` processes, results in input order, at most
    ``window`` items in flight (so a huge input never sits in memory)."""
    if num_proc <= 1:
        init(init_arg)
        for it in items:
            yield fn(it)
        return
    methods = mp.get_all_start_methods()
    ctx = mp.get_context('fork' if 'fork' in methods and sys.platform != 'darwin' else 'spawn')
    window = window or 2 * num_proc + 2
    ex = ProcessPoolExecutor(num_proc, mp_context=ctx, initializer=init, initargs=(init_arg,))
    try:
        q: deque[Future[R]] = deque()
        for it in items:
            q.append(ex.submit(fn, it))
            if len(q) >= window:
                yield q.popleft().result()
        while q:
            yield q.popleft().result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
