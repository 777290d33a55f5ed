"""The conversion engine: sources -> (curate) -> tokenize -> pack -> MDS, in parallel, deterministic.

    main process (this module)                 workers (--num_proc, prep/worker.py)
    --------------------------                 ------------------------------------
    sources.iter_chunks()  --- Chunk --->      decode, parse (jsonl/records), quality filters,
    (raw bytes, ~1 MB)                         exact key + MinHash band keys, encode_batch,
                                               flat token array (+BOS/EOS)
    results in input order <-- ChunkResult --
    exact / near dedup (first seen wins), per-domain packing into concat_tokens rows
    (prep/packer.py), TokenMDSWriter (vectorised shards), unigram counts, stats.json

Chunks are submitted with a bounded window and consumed in submission order, so the output
is byte-identical for any ``num_proc`` and memory does not grow with the input. With
``num_proc=1`` everything runs in-process. ``PrepConfig`` checks itself on construction.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from foundry_ext.atomic import atomic_dir, clean_stale_temp
from foundry_ext.errors import UserError
from foundry_ext.prep.mds_writer import TokenMDSWriter, check_hashes, parse_compression, token_dtype
from foundry_ext.prep.packer import Packer
from foundry_ext.prep.quality import QualityConfig
from foundry_ext.prep.sources import Source, iter_chunks
from foundry_ext.prep.worker import MAX_EXAMPLES, ChunkResult, WorkerConfig, init_worker, ordered_map, process_chunk

SPLIT_ORDER = ('train', 'val', 'validation', 'test')


@dataclass
class PrepConfig:
    """Everything that decides the output (and a few things that don't: num_proc, progress).

    Checked on construction (one-line ``UserError`` naming the flag); ``run`` trusts it.
    """
    tokenizer: str | Path                    # local Hugging Face tokenizer folder (tokenizer.json)
    out: str | Path                          # output folder: <domain>/<split>/ MDS + stats.json
    concat_tokens: int = 128                 # tokens per packed sample (>= 2)
    bos: bool = False                        # put the tokenizer's bos_token before each document
    no_wrap: bool = False                    # truncate a document at the row end instead of wrapping
    compression: Optional[str] = None        # MDS shard compression: zstd, zstd:<level>, gz, bz2, br, snappy
    hashes: list[str] = field(default_factory=list)   # MDS shard hashes to record (sha1, xxh64, ...)
    encoding_errors: str = 'strict'          # non-UTF-8 input: strict | replace | skip
    strict: bool = False                     # a bad record is an error instead of a skip
    text_field: str = 'text'                 # jsonl / records: the field holding the text
    domain_field: Optional[str] = None       # jsonl / records: the field naming the output domain
    quality: Optional[QualityConfig] = None  # quality filters (None or not enabled: off)
    exact_dedup: bool = False                # drop exact duplicates (normalized text), first kept
    near_dedup: Optional[float] = None       # MinHash near-dedup Jaccard threshold in (0, 1), e.g. 0.8
    minhash_perm: int = 128                  # MinHash permutations (>= 2)
    minhash_ngram: int = 5                   # MinHash word n-gram shingle size
    minhash_seed: int = 1                    # MinHash seed
    overwrite: bool = False                  # replace an existing ``out``
    num_proc: int = 1                        # worker processes (>= 1); the output does not depend on it
    block_bytes: int = 1 << 20               # raw input bytes per work chunk
    max_doc_bytes: int = 1 << 23             # a larger text file is streamed in pieces
    shard_size: int = 1 << 26                # MDS shard size limit in bytes
    progress: bool = False                   # show a progress bar (commands only)
    tokenizer_impl: str = 'auto'             # auto | fast | hf: same ids, see fasttok.py

    def __post_init__(self) -> None:
        if self.concat_tokens < 2:
            raise UserError(f'--concat_tokens must be >= 2, got {self.concat_tokens}')
        if self.num_proc < 1:
            raise UserError(f'--num_proc must be >= 1, got {self.num_proc}')
        if self.tokenizer_impl not in ('auto', 'fast', 'hf'):
            raise UserError(f'--tokenizer_impl must be auto, fast or hf, got {self.tokenizer_impl!r}')
        if self.encoding_errors not in ('strict', 'replace', 'skip'):
            raise UserError(f"--encoding_errors must be strict, replace or skip, got {self.encoding_errors!r}")
        if self.near_dedup is not None and not 0 < self.near_dedup < 1:
            raise UserError(f'--near_dedup is a Jaccard threshold in (0, 1), got {self.near_dedup}')
        if self.minhash_perm < 2:
            raise UserError(f'--minhash_perm must be >= 2, got {self.minhash_perm}')
        parse_compression(self.compression)
        check_hashes(self.hashes)


def _bos_id(tokenizer_dir: Path, tok) -> Optional[int]:
    from foundry_ext.prep.tokenizer import special_token_id
    return special_token_id(tokenizer_dir, tok, 'bos_token')


def _split_rank(s: str) -> tuple:
    return (SPLIT_ORDER.index(s), '') if s in SPLIT_ORDER else (len(SPLIT_ORDER), s)


def _worker_config(cfg: PrepConfig, tok: Any, eos: int, bos: Optional[int], dtype: np.dtype) -> WorkerConfig:
    quality = None
    if cfg.quality is not None and cfg.quality.enabled():
        quality = QualityConfig.from_dict(cfg.quality.to_dict())   # normalized n-gram keys
    return WorkerConfig(
        tokenizer_json=tok.to_str(), eos=eos, bos=bos, dtype=dtype.name,
        text_field=cfg.text_field, domain_field=cfg.domain_field,
        encoding_errors=cfg.encoding_errors, strict=cfg.strict, quality=quality,
        exact_dedup=cfg.exact_dedup, near_dedup=cfg.near_dedup, minhash_perm=cfg.minhash_perm,
        minhash_ngram=cfg.minhash_ngram, minhash_seed=cfg.minhash_seed,
        max_piece_chars=max(1 << 16, min(cfg.max_doc_bytes, 1 << 20)),
        tokenizer_impl=cfg.tokenizer_impl)


class _Dedup:
    """Exact / near dedup over all chunks in input order: the first document seen is kept."""

    def __init__(self, cfg: PrepConfig):
        from foundry_ext.prep.dedup import DedupIndex, optimal_bands
        bands = optimal_bands(cfg.near_dedup, cfg.minhash_perm)[0] if cfg.near_dedup else 0
        self.index = DedupIndex(bands)
        self.exact_dropped = self.near_dropped = 0

    def keep(self, r: ChunkResult) -> np.ndarray:
        """Bool per document of ``r``: not a duplicate of an earlier kept one."""
        n = len(r.lens)
        keep = np.ones(n, bool)
        if r.exact is not None:
            for i, key in enumerate(r.exact):
                if self.index.seen_exact(key):
                    keep[i] = False
                    self.exact_dropped += 1
        if r.bands is not None:
            for i in range(n):
                if keep[i] and self.index.seen_near(r.bands[i]):
                    keep[i] = False
                    self.near_dropped += 1
        return keep


def _domain_groups(r: ChunkResult, keep: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(output domain, bool mask of ``r``'s documents going there), in first-seen order."""
    if r.domains is None:
        return [(r.domain, keep)]
    darr = np.array([d if d is not None else r.domain for d in r.domains], dtype=object)
    order = list(dict.fromkeys(darr.tolist()))
    return [(d, keep & (darr == d)) for d in order]


def run(sources: list[Source], cfg: PrepConfig, on_progress: Optional[Callable[[int], None]] = None,
        info: Optional[dict] = None) -> dict:
    """Convert ``sources`` into ``cfg.out``; returns (and writes) ``stats.json``. ``info``, if
    given, receives what does not go into the (deterministic) stats: the tokenizer
    implementation used and how many texts fell back to ``encode_batch``."""
    from foundry_ext.prep.tokenizer import load_eos
    out, tok_dir = Path(cfg.out), Path(cfg.tokenizer)
    if out.exists() and not cfg.overwrite:
        raise UserError(f'output folder {out} already exists; pass --overwrite to replace it '
                        'or choose another --out')
    tok, eos, vocab = load_eos(tok_dir)
    bos = None
    if cfg.bos:
        bos = _bos_id(tok_dir, tok)
        if bos is None:
            raise UserError(f'--bos: tokenizer {tok_dir} defines no bos_token; set one in its '
                            'tokenizer_config.json or leave out --bos')
    dtype = token_dtype(vocab)
    L = cfg.concat_tokens
    wcfg = _worker_config(cfg, tok, eos, bos, dtype)
    dedup = _Dedup(cfg) if cfg.exact_dedup or cfg.near_dedup else None
    counters: dict[str, int] = {'read': 0, 'bad': 0, 'decode_replaced': 0, 'decode_skipped': 0, 'empty': 0}
    bad_examples: list[str] = []
    packers: dict[tuple[str, str], Packer] = {}
    clean_stale_temp(out)
    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        chunks = iter_chunks(sources, cfg.text_field, cfg.domain_field, cfg.block_bytes, cfg.max_doc_bytes)
        for r in ordered_map(process_chunk, chunks, cfg.num_proc, init_worker, wcfg):
            for k, v in r.counters.items():
                counters[k] = counters.get(k, 0) + v
            if len(bad_examples) < MAX_EXAMPLES:
                bad_examples.extend(r.bad_examples[:MAX_EXAMPLES - len(bad_examples)])
            if info is not None:
                info['tokenizer_impl'] = r.impl
                info['fallback_docs'] = info.get('fallback_docs', 0) + r.fallback_docs
            lens = r.lens
            if on_progress is not None:
                on_progress(r.nbytes)
            if len(lens) == 0:
                continue
            keep = dedup.keep(r) if dedup is not None else np.ones(len(lens), bool)
            for d, sel in _domain_groups(r, keep):
                if not sel.any():
                    continue
                key = (d, r.split)
                p = packers.get(key)
                if p is None:
                    w = TokenMDSWriter(tmp / d / r.split, dtype, L, cfg.compression, cfg.hashes, cfg.shard_size)
                    p = packers[key] = Packer(w, L, vocab, dtype, cfg.no_wrap)
                if sel.all():
                    p.add(r.tokens, lens)
                else:
                    p.add(r.tokens[np.repeat(sel, lens)], lens[sel])
                p.docs += int(r.last[sel].sum())
                if r.names is None:
                    p.files.add(r.name)
                else:
                    p.files.update(nm for nm, s in zip(r.names, sel.tolist()) if s)
        exact_dropped = dedup.exact_dropped if dedup is not None else 0
        near_dropped = dedup.near_dropped if dedup is not None else 0
        curation = _curation_report(counters, exact_dropped, near_dropped, cfg, bad_examples)
        if not packers:
            raise UserError('no documents to convert: ' + (
                'the input is empty' if counters['read'] == 0 else
                f'all {counters["read"]} input records were dropped ({_dropped_summary(curation)})') +
                '; check --input (and --text_field / the curation flags)')
        stats: dict[str, Any] = {'concat_tokens': L, 'dtype': dtype.name, 'eos_token_id': eos,
                                 'bos_token_id': bos, 'vocab_size': vocab, 'tokenizer': str(tok_dir),
                                 'no_wrap': cfg.no_wrap, 'compression': cfg.compression, 'domains': {}}
        for (d, s) in sorted(packers, key=lambda k: (k[0], _split_rank(k[1]))):
            p = packers[(d, s)]
            p.w.finish()
            if p.samples == 0:
                raise UserError(f'{d}/{s} has {len(p.left)} tokens, fewer than one sample of '
                                f'--concat_tokens {L}; add text or lower --concat_tokens')
            np.save(tmp / d / f'{s}.token_counts.npy', p.counts)
            entry = {'files': len(p.files), 'docs': p.docs, 'samples': p.samples, 'tokens': p.samples * L,
                     'dropped_tail_tokens': int(len(p.left))}
            if cfg.no_wrap:
                entry['truncated_tokens'] = p.truncated
            stats['domains'].setdefault(d, {})[s] = entry
        stats['decode'] = {'mode': cfg.encoding_errors, 'replaced_docs': counters['decode_replaced'],
                           'skipped_docs': counters['decode_skipped']}
        stats['curation'] = curation
        (tmp / 'stats.json').write_text(json.dumps(stats, indent=2) + '\n')
    return stats


def _curation_report(c: dict, exact: int, near: int, cfg: PrepConfig, examples: list[str]) -> dict:
    steps = [('bad_records', c.get('bad', 0)), ('non_utf8_skipped', c.get('decode_skipped', 0)),
             ('empty', c.get('empty', 0))]
    rules = cfg.quality.rules() if cfg.quality is not None else []
    rules += sorted(k[8:] for k in c if k.startswith('quality:') and k[8:] not in rules)
    steps += [(f'quality:{r}', c.get(f'quality:{r}', 0)) for r in rules]
    if cfg.exact_dedup:
        steps.append(('exact_dedup', exact))
    if cfg.near_dedup:
        steps.append(('near_dedup', near))
    remaining = c.get('read', 0)
    rows = []
    for name, dropped in steps:
        remaining -= dropped
        rows.append({'step': name, 'dropped': int(dropped), 'kept': int(remaining)})
    rep = {'read': int(c.get('read', 0)), 'steps': rows, 'kept': int(remaining),
           'flags': {'strict': cfg.strict, 'encoding_errors': cfg.encoding_errors,
                     'quality': cfg.quality.to_dict() if cfg.quality is not None else {},
                     'exact_dedup': cfg.exact_dedup, 'near_dedup': cfg.near_dedup,
                     'minhash_perm': cfg.minhash_perm if cfg.near_dedup else None,
                     'minhash_ngram': cfg.minhash_ngram if cfg.near_dedup else None}}
    if examples:
        rep['bad_record_examples'] = examples
    return rep


def _dropped_summary(cur: dict) -> str:
    parts = [f"{r['step']}: {r['dropped']}" for r in cur['steps'] if r['dropped']]
    return ', '.join(parts) or 'none dropped'


def curation_table(stats: dict) -> str:
    cur = stats.get('curation') or {}
    lines = [f"{'curation step':<28}{'dropped':>10}{'kept':>10}",
             f"{'input records':<28}{'':>10}{cur.get('read', 0):>10}"]
    for r in cur.get('steps', []):
        lines.append(f"{r['step']:<28}{r['dropped']:>10}{r['kept']:>10}")
    for ex in cur.get('bad_record_examples', []):
        lines.append(f'  skipped: {ex}')
    return '\n'.join(lines)


def domain_table(stats: dict) -> str:
    lines = []
    for domain, splits in stats['domains'].items():
        for split, s in splits.items():
            lines.append(f"{domain:>12}/{split:<6} {s['docs']:>8} docs -> {s['samples']:>8} samples "
                         f"({s['tokens']:>10} tokens)")
    return '\n'.join(lines)
