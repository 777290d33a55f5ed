"""Shared command-line surface of the ``data_prep/convert_*_to_mds.py`` scripts.

Each script adds its input options, builds ``sources`` and calls ``run_cli``; the flags for
packing, output, parallelism and curation are the same everywhere.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

from foundry_ext.errors import UserError, exit_with


def default_num_proc() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def add_common_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('output and packing')
    g.add_argument('--tokenizer', required=True, help='local Hugging Face tokenizer folder (with tokenizer.json)')
    g.add_argument('--out', required=True, help='output MDS root; written to a temporary folder, renamed at the end')
    g.add_argument('--overwrite', action='store_true', help='replace an existing --out')
    g.add_argument('--concat_tokens', type=int, default=128, help='tokens per packed sample (default 128)')
    g.add_argument('--bos', action='store_true', help="also put the tokenizer's BOS token before every document")
    g.add_argument('--no_wrap', action='store_true',
                   help='never carry the rest of a document into the next sample (it is dropped and counted), '
                        "as LLM Foundry's --no_wrap")
    g.add_argument('--compression', default=None, help='MDS shard compression: zstd, zstd:<level>, gz, bz2, br, snappy')
    g.add_argument('--hashes', default='', help='comma-separated shard hashes for index.json, e.g. sha1,xxh64')
    g.add_argument('--shard_size_mb', type=float, default=64, help='MDS shard size limit (default 64 MiB)')
    g.add_argument('--num_proc', type=int, default=default_num_proc(),
                   help='worker processes (default: all CPUs); the output is identical for any value')
    g.add_argument('--max_doc_mb', type=float, default=8,
                   help='text files larger than this are streamed in pieces (default 8 MB)')
    g.add_argument('--tokenizer_impl', default='auto', choices=['auto', 'fast', 'hf'],
                   help='auto: the exact fast byte-level BPE path when the tokenizer allows it, else '
                        "tokenizers' encode_batch (hf); the ids are the same")
    g.add_argument('--progress', action=argparse.BooleanOptionalAction, default=None,
                   help='progress bar on stderr (default: when stderr is a terminal)')
    b = p.add_argument_group('bad input')
    b.add_argument('--encoding_errors', default='strict', choices=['strict', 'replace', 'skip'],
                   help='non-UTF-8 input: stop (default), replace bad bytes, or skip the document; counted')
    b.add_argument('--strict', action='store_true',
                   help='stop at the first record that is not JSON or lacks the text field '
                        '(default: skip it, count it and show its line number)')
    c = p.add_argument_group('curation (each step is counted in stats.json "curation" and printed)')
    c.add_argument('--exact_dedup', action='store_true', help='drop documents whose normalized text was seen before')
    c.add_argument('--near_dedup', type=float, default=None, metavar='JACCARD',
                   help='drop near-duplicates with MinHash+LSH at this Jaccard threshold, e.g. 0.8')
    c.add_argument('--minhash_perm', type=int, default=128, help='MinHash permutations (default 128)')
    c.add_argument('--minhash_ngram', type=int, default=5, help='word n-gram shingle size (default 5)')
    c.add_argument('--minhash_seed', type=int, default=1)
    c.add_argument('--quality', default=None, metavar='PRESET',
                   help='quality filter preset: gopher (the single thresholds below override it)')
    for name, typ, hlp in [
            ('min_chars', int, 'minimum characters'), ('max_chars', int, 'maximum characters'),
            ('min_words', int, 'minimum words'), ('max_words', int, 'maximum words'),
            ('min_mean_word_len', float, 'minimum mean word length'),
            ('max_mean_word_len', float, 'maximum mean word length'),
            ('max_symbol_ratio', float, "max ('#' + ellipses) per word"),
            ('max_non_alpha_ratio', float, 'max fraction of non-whitespace characters that are not letters'),
            ('min_alpha_words', float, 'min fraction of words with a letter'),
            ('min_stop_words', int, 'min number of distinct English stop words'),
            ('max_bullet_lines', float, 'max fraction of lines starting with a bullet'),
            ('max_ellipsis_lines', float, 'max fraction of lines ending with an ellipsis'),
            ('max_dup_line_frac', float, 'max fraction of repeated lines'),
            ('max_dup_line_char_frac', float, 'max fraction of characters in repeated lines'),
            ('max_dup_para_frac', float, 'max fraction of repeated paragraphs'),
            ('max_dup_para_char_frac', float, 'max fraction of characters in repeated paragraphs')]:
        c.add_argument(f'--{name}', type=typ, default=None, help=hlp)
    c.add_argument('--max_top_ngram_frac', default=None, metavar='N:F,...',
                   help='max char fraction of the most repeated word n-gram, e.g. 2:0.2,3:0.18,4:0.16')
    c.add_argument('--max_dup_ngram_frac', default=None, metavar='N:F,...',
                   help='max char fraction covered by repeated word n-grams, e.g. 5:0.15,10:0.1')


def config_from_args(a: argparse.Namespace, **extra):
    from foundry_ext.data.pipeline import PrepConfig
    from foundry_ext.data.quality import QualityConfig, parse_ngram_thresholds
    q = QualityConfig.preset(a.quality) if a.quality else QualityConfig()
    q.update(**{k: getattr(a, k) for k in (
        'min_chars', 'max_chars', 'min_words', 'max_words', 'min_mean_word_len', 'max_mean_word_len',
        'max_symbol_ratio', 'max_non_alpha_ratio', 'min_alpha_words', 'min_stop_words',
        'max_bullet_lines', 'max_ellipsis_lines', 'max_dup_line_frac', 'max_dup_line_char_frac',
        'max_dup_para_frac', 'max_dup_para_char_frac')},
        max_top_ngram_frac=parse_ngram_thresholds(a.max_top_ngram_frac, '--max_top_ngram_frac'),
        max_dup_ngram_frac=parse_ngram_thresholds(a.max_dup_ngram_frac, '--max_dup_ngram_frac'))
    if a.shard_size_mb <= 0 or a.max_doc_mb <= 0:
        raise UserError('--shard_size_mb and --max_doc_mb must be > 0')
    progress = a.progress if a.progress is not None else sys.stderr.isatty()
    return PrepConfig(
        tokenizer=a.tokenizer, out=a.out, concat_tokens=a.concat_tokens, bos=a.bos, no_wrap=a.no_wrap,
        compression=a.compression, hashes=[h for h in a.hashes.split(',') if h],
        encoding_errors=a.encoding_errors, strict=a.strict, quality=q if q.enabled() else None,
        exact_dedup=a.exact_dedup, near_dedup=a.near_dedup, minhash_perm=a.minhash_perm,
        minhash_ngram=a.minhash_ngram, minhash_seed=a.minhash_seed, overwrite=a.overwrite,
        num_proc=a.num_proc, max_doc_bytes=int(a.max_doc_mb * 1e6), shard_size=int(a.shard_size_mb * (1 << 20)),
        progress=progress, tokenizer_impl=a.tokenizer_impl, **extra)


def run_cli(a: argparse.Namespace, make_sources: Callable[[], list], **extra) -> int:
    """Build the config and sources, convert, print the tables; UserError -> one line, exit 2."""
    from foundry_ext.data.pipeline import curation_table, domain_table, run
    from foundry_ext.data.sources import total_bytes
    t0 = time.time()
    try:
        cfg = config_from_args(a, **extra)
        sources = make_sources()
        bar = None
        if cfg.progress:
            from tqdm import tqdm
            bar = tqdm(total=total_bytes(sources), unit='B', unit_scale=True, desc='convert', file=sys.stderr)
        try:
            info: dict = {}
            stats = run(sources, cfg, on_progress=bar.update if bar is not None else None, info=info)
        finally:
            if bar is not None:
                bar.close()
    except UserError as e:
        return exit_with(e)
    print(domain_table(stats))
    print(curation_table(stats))
    total = sum(s['tokens'] for splits in stats['domains'].values() for s in splits.values())
    dt = time.time() - t0
    print(f'wrote {a.out}: {total} tokens in {dt:.1f}s ({total / max(dt, 1e-9):,.0f} tokens/s, '
          f'{cfg.num_proc} process{"es" if cfg.num_proc > 1 else ""}, tokenizer: {info.get("tokenizer_impl")}'
          + (f', {info["fallback_docs"]} texts via encode_batch' if info.get('fallback_docs') else '')
          + f'); counts in {Path(a.out) / "stats.json"}')
    return 0


def split_spec(spec: str, default_split: str) -> tuple[str, str]:
    """'val=path/*.jsonl' -> ('val', 'path/*.jsonl'); 'path' -> (default_split, 'path')."""
    if '=' in spec:
        s, _, rest = spec.partition('=')
        if s and '/' not in s and not Path(spec).exists():
            return s, rest
    return default_split, spec
