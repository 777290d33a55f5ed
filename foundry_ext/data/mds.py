"""Text -> tokenized, packed MDS: one MDS dataset per (domain, split).

Input layout, per domain sub-folder of ``input``:
  ``<domain>/<split>.jsonl``   one JSON object per line with a ``text`` field (the embedded corpus), or
  ``<domain>/<split>/**/*``    one document per text file, or
  ``<domain>/**/*``            text files directly (all go to split ``train``).
Output: ``out/<domain>/<split>/`` (MDS, column ``tokens``: ``ndarray:uint16`` or ``uint32``,
exactly ``concat_tokens`` long, EOS after every document), read by LLM Foundry's ``text``
loader as ``dataset: {local: out/<domain>, split: <split>}``; ``out/stats.json`` with
counts, and ``out/<domain>/<split>.token_counts.npy`` (unigram counts, for baselines).
"""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np

from foundry_ext.atomic import atomic_dir
from foundry_ext.errors import UserError

TEXT_SUFFIXES = {'.txt', '.md', '.py', '.rst', '.json', '.csv', '.html', '.tex', '.c', '.h', '.js'}
SPLITS = ('train', 'val', 'test')


class _DecodeCounter:
    def __init__(self, errors: str):
        if errors not in ('strict', 'replace', 'skip'):
            raise UserError(f"--encoding_errors must be strict, replace or skip, got {errors!r}")
        self.errors = errors
        self.replaced = 0
        self.skipped = 0

    def decode(self, raw: bytes, where: str) -> str | None:
        try:
            return raw.decode('utf-8')
        except UnicodeDecodeError as e:
            if self.errors == 'strict':
                raise UserError(f'{where} is not valid UTF-8 (byte {e.start}); pass '
                                '--encoding_errors replace (or skip) to convert it anyway') from None
            if self.errors == 'skip':
                self.skipped += 1
                return None
            self.replaced += 1
            return raw.decode('utf-8', errors='replace')


def _open_bytes(path: Path):
    return gzip.open(path, 'rb') if path.suffix == '.gz' else open(path, 'rb')


def _is_text_file(p: Path) -> bool:
    suffix = p.suffixes[-2] if p.suffix == '.gz' and len(p.suffixes) > 1 else p.suffix
    return p.is_file() and suffix in TEXT_SUFFIXES and not p.name.startswith('.')


def _jsonl_docs(path: Path, dec: _DecodeCounter) -> Iterator[str]:
    with _open_bytes(path) as f:
        for lineno, raw in enumerate(f, 1):
            line = dec.decode(raw, f'{path}:{lineno}')
            if line is None or not line.strip():
                continue
            try:
                text = json.loads(line)['text']
            except (ValueError, KeyError, TypeError):
                raise UserError(f'{path}:{lineno} is not a JSON object with a "text" field; '
                                'fix or remove that line') from None
            if text:
                yield text


def _file_docs(files: list[Path], dec: _DecodeCounter) -> Iterator[str]:
    for p in files:
        with _open_bytes(p) as f:
            text = dec.decode(f.read(), str(p))
        if text:
            yield text


def discover(input_dir: Path) -> dict[str, dict[str, list[Path]]]:
    """{domain: {split: [files]}} in a deterministic order."""
    if not input_dir.is_dir():
        raise UserError(f'input folder {input_dir} does not exist; point --input at a corpus folder '
                        '(build one with `python -m foundry_ext corpus`)')
    plan: dict[str, dict[str, list[Path]]] = {}
    for d in sorted(p for p in input_dir.iterdir() if p.is_dir() and not p.name.startswith('.')):
        splits: dict[str, list[Path]] = {}
        for s in SPLITS:
            for name in (f'{s}.jsonl', f'{s}.jsonl.gz'):
                if (d / name).is_file():
                    splits.setdefault(s, []).append(d / name)
            if (d / s).is_dir():
                files = sorted(p for p in (d / s).rglob('*') if _is_text_file(p))
                if files:
                    splits.setdefault(s, []).extend(files)
        if not splits:
            files = sorted(p for p in d.rglob('*') if _is_text_file(p))
            if files:
                splits['train'] = files
        if splits:
            plan[d.name] = splits
    if not plan:
        raise UserError(f'input folder {input_dir} has no domain sub-folders with text '
                        '(<domain>/train.jsonl or <domain>/*.txt); nothing to convert')
    return plan


def _docs(files: list[Path], dec: _DecodeCounter) -> Iterator[str]:
    for f in files:
        if f.name.endswith('.jsonl') or f.name.endswith('.jsonl.gz'):
            yield from _jsonl_docs(f, dec)
        else:
            yield from _file_docs([f], dec)


def _batched(it: Iterator[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def load_eos(tokenizer_dir: Path):
    """(tokenizers.Tokenizer, eos_id, vocab_size) from a local HF tokenizer folder."""
    from tokenizers import Tokenizer
    tj = tokenizer_dir / 'tokenizer.json'
    if not tj.is_file():
        raise UserError(f'tokenizer folder {tokenizer_dir} has no tokenizer.json; build one with '
                        f'`python -m foundry_ext tokenizer --out {tokenizer_dir}`')
    tok = Tokenizer.from_file(str(tj))
    eos = None
    cfg = tokenizer_dir / 'tokenizer_config.json'
    if cfg.is_file():
        eos_tok = json.loads(cfg.read_text()).get('eos_token')
        if isinstance(eos_tok, dict):
            eos_tok = eos_tok.get('content')
        if eos_tok:
            eos = tok.token_to_id(eos_tok)
    if eos is None:
        raise UserError(f'tokenizer {tokenizer_dir} defines no eos_token; documents cannot be separated. '
                        'Set eos_token in its tokenizer_config.json')
    return tok, eos, tok.get_vocab_size(with_added_tokens=True)


def convert_to_mds(input_dir: str | Path, tokenizer_dir: str | Path, out: str | Path,
                   concat_tokens: int = 128, compression: str | None = None,
                   encoding_errors: str = 'strict', overwrite: bool = False,
                   batch_docs: int = 512) -> dict:
    input_dir, tokenizer_dir, out = Path(input_dir), Path(tokenizer_dir), Path(out)
    if concat_tokens < 2:
        raise UserError(f'--concat_tokens must be >= 2, got {concat_tokens}')
    plan = discover(input_dir)
    tok, eos, vocab = load_eos(tokenizer_dir)
    dtype = np.uint16 if vocab <= 2**16 else np.uint32
    from streaming import MDSWriter  # after validation: it imports torch
    dec = _DecodeCounter(encoding_errors)
    stats: dict = {'concat_tokens': concat_tokens, 'dtype': np.dtype(dtype).name, 'eos_token_id': eos,
                   'vocab_size': vocab, 'tokenizer': str(tokenizer_dir), 'domains': {}}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for domain, splits in plan.items():
            stats['domains'][domain] = {}
            for split, files in splits.items():
                counts = np.zeros(vocab, dtype=np.int64)
                docs = samples = 0
                buf = np.empty(0, dtype=dtype)
                with MDSWriter(out=str(tmp / domain / split), columns={'tokens': f'ndarray:{np.dtype(dtype).name}'},
                               compression=compression, size_limit=1 << 26) as writer:
                    for batch in _batched(_docs(files, dec), batch_docs):
                        enc = tok.encode_batch(batch, add_special_tokens=False)
                        parts = [buf]
                        for e in enc:
                            parts.append(np.asarray(e.ids, dtype=dtype))
                            parts.append(np.asarray([eos], dtype=dtype))
                        buf = np.concatenate(parts)
                        docs += len(batch)
                        n_full = len(buf) // concat_tokens
                        if n_full:
                            full = buf[:n_full * concat_tokens].reshape(n_full, concat_tokens)
                            counts += np.bincount(full.ravel(), minlength=vocab)
                            for row in full:
                                writer.write({'tokens': row})
                            samples += n_full
                            buf = buf[n_full * concat_tokens:].copy()
                if samples == 0:
                    raise UserError(f'{domain}/{split} has {len(buf)} tokens, fewer than one sample of '
                                    f'--concat_tokens {concat_tokens}; add text or lower --concat_tokens')
                np.save(tmp / domain / f'{split}.token_counts.npy', counts)
                stats['domains'][domain][split] = {
                    'files': len(files), 'docs': docs, 'samples': samples,
                    'tokens': samples * concat_tokens, 'dropped_tail_tokens': int(len(buf))}
        stats['decode'] = {'mode': encoding_errors, 'replaced_docs': dec.replaced, 'skipped_docs': dec.skipped}
        (tmp / 'stats.json').write_text(json.dumps(stats, indent=2) + '\n')
    return stats


def unigram_cross_entropy(train_counts: np.ndarray, eval_counts: np.ndarray) -> float:
    """Cross-entropy (nats/token) of ``eval_counts`` under the add-one-smoothed unigram
    distribution of ``train_counts``: the loss a model that ignores context would reach."""
    p = (train_counts + 1.0) / (train_counts.sum() + len(train_counts))
    n = eval_counts.sum()
    if n == 0:
        return math.nan
    return float(-(eval_counts * np.log(p)).sum() / n)


def unigram_baselines(mds_root: str | Path, eval_split: str = 'val') -> dict[str, float]:
    """{domain: unigram cross-entropy of its eval split} for an MDS root written above."""
    root = Path(mds_root)
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        tr, ev = d / 'train.token_counts.npy', d / f'{eval_split}.token_counts.npy'
        if tr.is_file() and ev.is_file():
            out[d.name] = unigram_cross_entropy(np.load(tr), np.load(ev))
    return out
