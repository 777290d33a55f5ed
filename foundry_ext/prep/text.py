"""Text -> tokenized, packed MDS: one MDS dataset per (domain, split).

Input layout, per domain sub-folder of ``input``:
  ``<domain>/<split>.jsonl``   one JSON object per line with a ``text`` field (the embedded corpus), or
  ``<domain>/<split>/**/*``    one document per text file, or
  ``<domain>/**/*``            text files directly (all go to split ``train``).
Output: ``out/<domain>/<split>/`` (MDS, column ``tokens``: ``ndarray:uint16`` or ``uint32``,
exactly ``concat_tokens`` long, EOS after every document), read by LLM Foundry's ``text``
loader as ``dataset: {local: out/<domain>, split: <split>}``; ``out/stats.json`` with
counts, and ``out/<domain>/<split>.token_counts.npy`` (unigram counts, for baselines).

The work is done by ``foundry_ext.prep.pipeline`` (parallel, curated, deterministic);
this module keeps the corpus-folder layout, the tokenizer loading and the baselines.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from foundry_ext.errors import UserError
from foundry_ext.prep.sources import Source, is_jsonl_file, is_text_file

SPLITS = ('train', 'val', 'test')


def discover(input_dir: Path) -> dict[str, dict[str, list[Path]]]:
    """{domain: {split: [files]}} in a deterministic order."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise UserError(f'input folder {input_dir} does not exist; point --input at a corpus folder '
                        '(build one with `python -m foundry_ext corpus`)')
    plan: dict[str, dict[str, list[Path]]] = {}
    for d in sorted(p for p in input_dir.iterdir() if p.is_dir() and not p.name.startswith('.')):
        splits: dict[str, list[Path]] = {}
        for s in SPLITS:
            for name in (f'{s}.jsonl', f'{s}.jsonl.gz', f'{s}.jsonl.zst'):
                if (d / name).is_file():
                    splits.setdefault(s, []).append(d / name)
            if (d / s).is_dir():
                files = sorted(p for p in (d / s).rglob('*') if is_text_file(p) or is_jsonl_file(p))
                if files:
                    splits.setdefault(s, []).extend(files)
        if not splits:
            files = sorted(p for p in d.rglob('*') if is_text_file(p))
            if files:
                splits['train'] = files
        if splits:
            plan[d.name] = splits
    if not plan:
        raise UserError(f'input folder {input_dir} has no domain sub-folders with text '
                        '(<domain>/train.jsonl or <domain>/*.txt); nothing to convert')
    return plan


def plan_sources(plan: dict[str, dict[str, list[Path]]]) -> list[Source]:
    """A ``discover`` plan -> engine sources (runs of jsonl / text files kept in order)."""
    sources: list[Source] = []
    for domain, splits in plan.items():
        for split, files in splits.items():
            for f in files:
                kind = 'jsonl' if is_jsonl_file(f) else 'text'
                if sources and sources[-1].kind == kind and sources[-1].domain == domain \
                        and sources[-1].split == split:
                    sources[-1].paths.append(f)
                else:
                    sources.append(Source(kind, split, domain, [f]))
    return sources


def convert_to_mds(input_dir: str | Path, tokenizer_dir: str | Path, out: str | Path,
                   concat_tokens: int = 128, compression: str | None = None,
                   encoding_errors: str = 'strict', overwrite: bool = False, **options: Any) -> dict:
    """Convert a corpus folder (layout above) to MDS; returns the ``stats.json`` dict.

    ``options`` are ``pipeline.PrepConfig`` fields: ``num_proc``, ``bos``, ``no_wrap``,
    ``hashes``, ``strict``, ``quality``, ``exact_dedup``, ``near_dedup``, ...
    The options are checked (``PrepConfig``) before the input folder is read.
    """
    from foundry_ext.prep.pipeline import PrepConfig, run
    cfg = PrepConfig(tokenizer=tokenizer_dir, out=out, concat_tokens=concat_tokens,
                     compression=compression, encoding_errors=encoding_errors, overwrite=overwrite,
                     **options)
    plan = discover(Path(input_dir))
    return run(plan_sources(plan), cfg)


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
