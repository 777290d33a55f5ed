"""The conversion engine: sources -> (curate) -> tokenize -> pack -> MDS, in parallel, deterministic.

    main process                               workers (--num_proc)
    ------------                               --------------------
    sources.iter_chunks()  --- Chunk --->      decode, parse (jsonl/records), quality filters,
    (raw bytes, ~1 MB)                         exact key + MinHash band keys, encode_batch,
                                               flat token array (+BOS/EOS)
    results in input order <-- Result ---
    exact / near dedup (first seen wins), per-domain packing into concat_tokens rows,
    TokenMDSWriter (vectorised shards), unigram counts

Chunks are submitted with a bounded window and consumed in submission order, so the output
is byte-identical for any ``num_proc`` and memory does not grow with the input. With
``num_proc=1`` everything runs in-process.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from foundry_ext.atomic import atomic_dir
from foundry_ext.errors import UserError
from foundry_ext.prep.mds_writer import TokenMDSWriter, check_hashes, parse_compression, token_dtype
from foundry_ext.prep.quality import QualityConfig
from foundry_ext.prep.sources import Chunk, Source, domain_name, iter_chunks

SPLIT_ORDER = ('train', 'val', 'validation', 'test')
MAX_EXAMPLES = 5
_STR_CUT = re.compile(r'(?<=\S) (?=\S)')


@dataclass
class PrepConfig:
    """Everything that decides the output (and a few things that don't: num_proc, progress)."""
    tokenizer: str | Path
    out: str | Path
    concat_tokens: int = 128
    bos: bool = False
    no_wrap: bool = False
    compression: Optional[str] = None
    hashes: list = field(default_factory=list)
    encoding_errors: str = 'strict'
    strict: bool = False
    text_field: str = 'text'
    domain_field: Optional[str] = None
    quality: Optional[QualityConfig] = None
    exact_dedup: bool = False
    near_dedup: Optional[float] = None       # Jaccard threshold, e.g. 0.8
    minhash_perm: int = 128
    minhash_ngram: int = 5
    minhash_seed: int = 1
    overwrite: bool = False
    num_proc: int = 1
    block_bytes: int = 1 << 20
    max_doc_bytes: int = 1 << 23
    shard_size: int = 1 << 26
    progress: bool = False
    tokenizer_impl: str = 'auto'             # auto | fast | hf: same ids, see fasttok.py


# ============================================================================== workers

_W: dict = {}


def _init_worker(cfg: dict) -> None:
    from tokenizers import Tokenizer
    _W.clear()
    _W.update(cfg)
    from foundry_ext.prep.fasttok import make_encoder
    _W['tok'] = Tokenizer.from_str(cfg['tokenizer_json'])
    _W['dtype'] = np.dtype(cfg['dtype'])
    _W['encode'], _W['impl'] = make_encoder(_W['tok'], _W['dtype'], cfg['tokenizer_impl'])
    if cfg['quality']:
        from foundry_ext.prep.quality import QualityFilter
        _W['qf'] = QualityFilter(QualityConfig.from_dict(cfg['quality']))
    else:
        _W['qf'] = None
    if cfg['near_dedup']:
        from foundry_ext.prep.dedup import MinHasher
        _W['mh'] = MinHasher(cfg['minhash_perm'], cfg['near_dedup'], cfg['minhash_ngram'], cfg['minhash_seed'])
    else:
        _W['mh'] = None


class _Bad:
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


def _decode(raw: bytes, where: str, counters: dict) -> Optional[str]:
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError as e:
        mode = _W['encoding_errors']
        if mode == 'strict':
            raise UserError(f'{where} is not valid UTF-8 (byte {e.start}); pass '
                            '--encoding_errors replace (or skip) to convert it anyway') from None
        if mode == 'skip':
            counters['decode_skipped'] += 1
            return None
        counters['decode_replaced'] += 1
        return raw.decode('utf-8', errors='replace')


def _docs_of(chunk: Chunk, counters: dict, bad: _Bad):
    """(text, domain or None, cont, last, source name) for each record of a chunk."""
    field_ = _W['text_field']
    dfield = _W['domain_field']
    if chunk.kind == 'texts':
        for name, raw, cont, last in chunk.payload:
            counters['read'] += 1
            text = _decode(raw, name, counters)
            if text is not None:
                yield text, None, cont, last, name
        return
    if chunk.kind == 'jsonl':
        fix = 'fix or remove that line, or leave out --strict to skip such lines'
        try:
            lines = chunk.payload.decode('utf-8').split('\n')
            raw_lines = None
        except UnicodeDecodeError:
            lines, raw_lines = None, chunk.payload.split(b'\n')
        for i in range(len(lines if lines is not None else raw_lines)):
            where = f'{chunk.source}:{chunk.first + i}'
            if lines is not None:
                line = lines[i]
            else:
                if not raw_lines[i].strip():
                    continue
                line = _decode(raw_lines[i], where, counters)
                if line is None:
                    counters['read'] += 1
                    continue
            if not line.strip():
                continue
            counters['read'] += 1
            try:
                obj = json.loads(line)
            except ValueError as e:
                bad(f'{where} is not a JSON object with a "{field_}" field (not JSON: {e.msg})', fix)
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
        return
    texts, doms = chunk.payload
    fix = 'fix those rows, or leave out --strict to skip them'
    for i, text in enumerate(texts):
        counters['read'] += 1
        if not isinstance(text, str):
            bad(f'{chunk.source} row {chunk.first + i} has no string "{field_}" '
                f'({type(text).__name__})', fix)
            continue
        yield text, (doms[i] if doms is not None else None), False, True, chunk.source


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


def process_chunk(chunk: Chunk) -> dict:
    counters = {'read': 0, 'decode_replaced': 0, 'decode_skipped': 0, 'empty': 0}
    bad = _Bad(_W['strict'])
    qf, mh = _W['qf'], _W['mh']
    kept_text: list[str] = []
    doms: list = []
    flags: list[tuple[bool, bool]] = []
    names: list[str] = []
    exact: list[int] = []
    bands: list[np.ndarray] = []
    if _W['exact_dedup']:
        from foundry_ext.prep.dedup import exact_key
    for text, dom, cont, last, name in _docs_of(chunk, counters, bad):
        if not text.strip():
            counters['empty'] += 1
            continue
        if qf is not None:
            reason = qf.check(text)
            if reason is not None:
                k = f'quality:{reason}'
                counters[k] = counters.get(k, 0) + 1
                continue
        if _W['exact_dedup']:
            exact.append(exact_key(text))
        if mh is not None:
            bands.append(mh.band_keys(text))
        kept_text.append(text)
        doms.append(domain_name(dom) if dom is not None else None)
        flags.append((cont, last))
        names.append(name)
    counters['bad'] = bad.count
    # tokenize: long texts in pieces (bounded memory), same tokens
    limit = _W['max_piece_chars']
    pieces: list[str] = []
    owner: list[int] = []
    for j, t in enumerate(kept_text):
        parts = _split_long(t, limit)
        pieces.extend(parts)
        owner.extend([j] * len(parts))
    encoder = getattr(_W['encode'], '__self__', None)
    fb0 = getattr(encoder, 'fallback_docs', 0)
    enc = _W['encode'](pieces) if pieces else []
    dtype = _W['dtype']
    bos = np.array([_W['bos']], dtype) if _W['bos'] is not None else None
    eos = np.array([_W['eos']], dtype)
    parts: list = []
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
    uniq_doms = set(doms)
    one_domain = len(uniq_doms) == 1 and None in uniq_doms
    uniq_names = set(names)
    return {
        'source': chunk.source, 'split': chunk.split, 'domain': chunk.domain, 'nbytes': chunk.nbytes,
        'counters': counters, 'bad_examples': bad.examples,
        'domains': None if one_domain or not doms else doms,
        'names': names if len(uniq_names) > 1 else None, 'name': next(iter(uniq_names), chunk.source),
        'last': np.array([f[1] for f in flags], bool), 'lens': lens, 'tokens': tokens,
        'exact': exact if _W['exact_dedup'] else None,
        'bands': np.stack(bands) if mh is not None and bands else None,
        'impl': _W['impl'], 'fallback_docs': getattr(encoder, 'fallback_docs', 0) - fb0,
    }


def ordered_map(fn: Callable, items: Iterable, num_proc: int, init: Callable, init_arg: Any,
                window: Optional[int] = None) -> Iterator:
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
        q: deque = deque()
        for it in items:
            q.append(ex.submit(fn, it))
            if len(q) >= window:
                yield q.popleft().result()
        while q:
            yield q.popleft().result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


# ============================================================================== main side


class _Packer:
    """Documents' tokens -> rows of ``L`` tokens for one (domain, split)."""

    def __init__(self, writer: TokenMDSWriter, L: int, vocab: int, dtype, no_wrap: bool):
        self.w, self.L, self.no_wrap = writer, L, no_wrap
        self.left = np.empty(0, dtype)
        self.counts = np.zeros(vocab, np.int64)
        self.docs = self.samples = self.truncated = 0
        self.files: set[str] = set()

    def _emit(self, rows: np.ndarray) -> None:
        if len(rows):
            self.w.write_rows(rows)
            self.counts += np.bincount(rows.ravel(), minlength=len(self.counts))
            self.samples += len(rows)

    def add(self, toks: np.ndarray, lens: np.ndarray) -> None:
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


def clean_stale_temp(out: Path) -> list[Path]:
    """Remove ``.<out>.tmp-<pid>`` / ``.old-<pid>`` folders left by runs that were killed."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.glob(f'.{out.name}.*-*'):
        m = re.fullmatch(rf'\.{re.escape(out.name)}\.(tmp|old)-(\d+)', p.name)
        if not m or not p.is_dir():
            continue
        pid = int(m.group(2))
        alive = True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            alive = False
        except PermissionError:
            pass
        if pid == os.getpid() or not alive:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _bos_id(tokenizer_dir: Path, tok) -> Optional[int]:
    from foundry_ext.prep.tokenizer import special_token_id
    return special_token_id(tokenizer_dir, tok, 'bos_token')


def _split_rank(s: str) -> tuple:
    return (SPLIT_ORDER.index(s), '') if s in SPLIT_ORDER else (len(SPLIT_ORDER), s)


def validate(cfg: PrepConfig) -> None:
    if cfg.concat_tokens < 2:
        raise UserError(f'--concat_tokens must be >= 2, got {cfg.concat_tokens}')
    if cfg.num_proc < 1:
        raise UserError(f'--num_proc must be >= 1, got {cfg.num_proc}')
    if cfg.tokenizer_impl not in ('auto', 'fast', 'hf'):
        raise UserError(f'--tokenizer_impl must be auto, fast or hf, got {cfg.tokenizer_impl!r}')
    if cfg.encoding_errors not in ('strict', 'replace', 'skip'):
        raise UserError(f"--encoding_errors must be strict, replace or skip, got {cfg.encoding_errors!r}")
    if cfg.near_dedup is not None and not 0 < cfg.near_dedup < 1:
        raise UserError(f'--near_dedup is a Jaccard threshold in (0, 1), got {cfg.near_dedup}')
    if cfg.minhash_perm < 2:
        raise UserError(f'--minhash_perm must be >= 2, got {cfg.minhash_perm}')
    parse_compression(cfg.compression)
    check_hashes(cfg.hashes)


def run(sources: list[Source], cfg: PrepConfig, on_progress: Optional[Callable[[int], None]] = None,
        info: Optional[dict] = None) -> dict:
    """Convert ``sources`` into ``cfg.out``; returns (and writes) ``stats.json``. ``info``, if
    given, receives what does not go into the (deterministic) stats: the tokenizer
    implementation used and how many texts fell back to ``encode_batch``."""
    from foundry_ext.prep.tokenizer import load_eos
    validate(cfg)
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
    wcfg = {
        'tokenizer_json': tok.to_str(), 'eos': eos, 'bos': bos, 'dtype': dtype.name,
        'text_field': cfg.text_field, 'domain_field': cfg.domain_field,
        'encoding_errors': cfg.encoding_errors, 'strict': cfg.strict,
        'quality': cfg.quality.to_dict() if cfg.quality is not None and cfg.quality.enabled() else None,
        'exact_dedup': cfg.exact_dedup, 'near_dedup': cfg.near_dedup, 'minhash_perm': cfg.minhash_perm,
        'minhash_ngram': cfg.minhash_ngram, 'minhash_seed': cfg.minhash_seed,
        'max_piece_chars': max(1 << 16, min(cfg.max_doc_bytes, 1 << 20)),
        'tokenizer_impl': cfg.tokenizer_impl,
    }
    index = None
    if cfg.exact_dedup or cfg.near_dedup:
        from foundry_ext.prep.dedup import DedupIndex, optimal_bands
        bands = optimal_bands(cfg.near_dedup, cfg.minhash_perm)[0] if cfg.near_dedup else 0
        index = DedupIndex(bands)
    counters: dict[str, int] = {'read': 0, 'bad': 0, 'decode_replaced': 0, 'decode_skipped': 0, 'empty': 0}
    bad_examples: list[str] = []
    exact_dropped = near_dropped = 0
    packers: dict[tuple[str, str], _Packer] = {}
    clean_stale_temp(out)
    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        chunks = iter_chunks(sources, cfg.text_field, cfg.domain_field, cfg.block_bytes, cfg.max_doc_bytes)
        for r in ordered_map(process_chunk, chunks, cfg.num_proc, _init_worker, wcfg):
            for k, v in r['counters'].items():
                counters[k] = counters.get(k, 0) + v
            if len(bad_examples) < MAX_EXAMPLES:
                bad_examples.extend(r['bad_examples'][:MAX_EXAMPLES - len(bad_examples)])
            if info is not None:
                info['tokenizer_impl'] = r['impl']
                info['fallback_docs'] = info.get('fallback_docs', 0) + r['fallback_docs']
            lens = r['lens']
            n = len(lens)
            if on_progress is not None:
                on_progress(r['nbytes'])
            if n == 0:
                continue
            keep = np.ones(n, bool)
            if r['exact'] is not None:
                for i, key in enumerate(r['exact']):
                    if index.seen_exact(key):
                        keep[i] = False
                        exact_dropped += 1
            if r['bands'] is not None:
                bands_arr = r['bands']
                for i in range(n):
                    if keep[i] and index.seen_near(bands_arr[i]):
                        keep[i] = False
                        near_dropped += 1
            doms = r['domains']
            if doms is None:
                groups = [(r['domain'], keep)]
            else:
                darr = np.array([d if d is not None else r['domain'] for d in doms], dtype=object)
                order = list(dict.fromkeys(darr.tolist()))
                groups = [(d, keep & (darr == d)) for d in order]
            for d, sel in groups:
                if not sel.any():
                    continue
                key = (d, r['split'])
                p = packers.get(key)
                if p is None:
                    w = TokenMDSWriter(tmp / d / r['split'], dtype, L, cfg.compression, cfg.hashes, cfg.shard_size)
                    p = packers[key] = _Packer(w, L, vocab, dtype, cfg.no_wrap)
                if sel.all():
                    p.add(r['tokens'], lens)
                else:
                    p.add(r['tokens'][np.repeat(sel, lens)], lens[sel])
                p.docs += int(r['last'][sel].sum())
                if r['names'] is None:
                    p.files.add(r['name'])
                else:
                    p.files.update(nm for nm, s in zip(r['names'], sel.tolist()) if s)
        curation = _curation_report(counters, exact_dropped, near_dropped, cfg, bad_examples)
        if not packers:
            raise UserError('no documents to convert: ' + (
                'the input is empty' if counters['read'] == 0 else
                f'all {counters["read"]} input records were dropped ({_dropped_summary(curation)})') +
                '; check --input (and --text_field / the curation flags)')
        stats: dict = {'concat_tokens': L, 'dtype': dtype.name, 'eos_token_id': eos, 'bos_token_id': bos,
                       'vocab_size': vocab, 'tokenizer': str(tok_dir), 'no_wrap': cfg.no_wrap,
                       'compression': cfg.compression, 'domains': {}}
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
