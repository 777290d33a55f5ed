"""`foundry-ext prep text|jsonl|hf|sft`: the data_prep command lines (``data_prep/*.py`` are shims).

The packing, output, parallelism and curation flags are the same for every converter
(:func:`add_common_args`); each converter adds its input options, builds its sources and calls
:func:`run_cli`. The work is done by :mod:`foundry_ext.prep.pipeline` (``text``, ``jsonl``, ``hf``)
and :mod:`foundry_ext.prep.finetuning` (``sft``).
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
    from foundry_ext.prep.pipeline import PrepConfig
    from foundry_ext.prep.quality import QualityConfig, parse_ngram_thresholds
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
    from foundry_ext.prep.pipeline import curation_table, domain_table, run
    from foundry_ext.prep.sources import total_bytes
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


_DOCS = {
    'text': """Convert text to packed, tokenized MDS (one dataset per domain/split).

Corpus-folder layout (what `python -m foundry_ext corpus` writes):

    python data_prep/convert_text_to_mds.py --input data/corpus --tokenizer data/tokenizer \
        --out data/mds --concat_tokens 128

  <input>/<domain>/<split>.jsonl[.gz|.zst], <input>/<domain>/<split>/**/*.txt, or
  <input>/<domain>/**/*.txt (split train) -> <out>/<domain>/<split>/

Any text files (.txt .md .py .rst ..., .gz/.zst read transparently), one document each:

    python data_prep/convert_text_to_mds.py --input 'docs/**/*.md' notes/ --domain notes \
        --split train --tokenizer data/tokenizer --out data/mds_notes

Curation (--exact_dedup, --near_dedup 0.8, --quality gopher, single thresholds) is counted
in <out>/stats.json ("curation") and printed. Same input + flags -> byte-identical output,
for any --num_proc.
""",
    'jsonl': """Convert jsonl or parquet records to packed, tokenized MDS.

    python data_prep/convert_jsonl_to_mds.py --input 'raw/*.jsonl.gz' val=raw/val.parquet \
        --text_field text --domain_field source --tokenizer data/tokenizer --out data/mds_web

--input takes files, folders (searched for .jsonl/.ndjson/.parquet, also .gz/.zst) and
globs, each optionally prefixed with its split (`val=...`; default --split). With
--domain_field every distinct value of that field becomes its own MDS dataset
<out>/<value>/<split>/ (records without it go to --domain). A line that is not JSON or lacks
the text field is skipped, counted and shown with its line number; --strict stops there.
""",
    'hf': """Convert a Hugging Face dataset to packed, tokenized MDS.

    # a folder written by Dataset.save_to_disk / DatasetDict.save_to_disk (all its splits):
    python data_prep/convert_hf_dataset.py --dataset data/my_ds --tokenizer data/tokenizer --out data/mds_ds
    # local data files through datasets' json/parquet/csv/text builders:
    python data_prep/convert_hf_dataset.py --dataset raw/part-0.parquet --data_files raw/part-1.parquet ...
    # the hub, only when online (HF_HUB_OFFLINE unset), streamed:
    python data_prep/convert_hf_dataset.py --dataset allenai/c4 --name en --split validation --streaming ...

Each dataset split becomes <out>/<domain>/<split>/ (--split picks one); --domain_field
splits by a column instead of one --domain.
""",
    'sft': """Convert prompt/response or chat-messages jsonl to MDS for the `sft` loader (or `finetuning`).

    python data_prep/convert_finetuning_dataset.py --input train=sft/train.jsonl val=sft/val.jsonl \
        --tokenizer data/tokenizer --out data/sft_mds --max_seq_len 512 [--chat_template chatml]

Train with:  train_loader: {name: sft, dataset: {data: data/sft_mds, split: train, max_seq_len: 512,
             train_on: all_assistant, packing_ratio: auto}}     (docs/finetune.md)
or LLM Foundry's loader: {name: finetuning, dataset: {remote: data/sft_mds, local: /tmp/sft_cache,
             split: train, max_seq_len: 512, decoder_only_format: true, shuffle: true}}
Chat rows are rendered with the tokenizer's chat template, else ChatML (written to stats.json and
saved with the trained model). A bad record (not JSON, missing fields, no assistant turn, rejected
by the template) stops the conversion with its line number and writes nothing; --skip_bad_records
skips and counts them. Examples longer than --max_seq_len are truncated by the loader (or dropped
with --on_too_long drop).
""",
}


def _is_parquet(p: Path) -> bool:
    return p.is_file() and p.suffix == '.parquet' and not p.name.startswith('.')


def text(argv: list[str] | None = None) -> int:
    """Convert text to packed, tokenized MDS (one dataset per domain/split)."""
    p = argparse.ArgumentParser(prog='foundry-ext prep text', description=_DOCS['text'],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--input', required=True, nargs='+',
                   help='a corpus folder with one sub-folder per domain; or, with --domain, text files, '
                        'folders and globs ([split=]path)')
    p.add_argument('--domain', default=None,
                   help='treat --input as plain text files/folders/globs, all of this domain')
    p.add_argument('--split', default='train', help='split for --domain inputs without split= (default train)')
    add_common_args(p)
    a = p.parse_args(argv)

    def sources():
        from foundry_ext.prep.sources import Source, domain_name, expand_inputs, is_jsonl_file, is_text_file
        from foundry_ext.prep.text import discover, plan_sources
        if a.domain is None:
            out = []
            for folder in a.input:
                out.extend(plan_sources(discover(Path(folder))))
            return out
        out = []
        for spec in a.input:
            split, path = split_spec(spec, a.split)
            files = expand_inputs([path], lambda q: is_text_file(q) or is_jsonl_file(q))
            for f in files:
                kind = 'jsonl' if is_jsonl_file(f) else 'text'
                if out and out[-1].kind == kind and out[-1].split == split:
                    out[-1].paths.append(f)
                else:
                    out.append(Source(kind, split, domain_name(a.domain), [f]))
        return out

    return run_cli(a, sources)


def jsonl(argv: list[str] | None = None) -> int:
    """Convert jsonl or parquet records to packed, tokenized MDS."""
    p = argparse.ArgumentParser(prog='foundry-ext prep jsonl', description=_DOCS['jsonl'],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--input', required=True, nargs='+', help='[split=]file, folder or glob of .jsonl / .parquet')
    p.add_argument('--split', default='train', help='split for inputs without split= (default train)')
    p.add_argument('--text_field', default='text', help='field (column) holding the document text')
    p.add_argument('--domain_field', default=None, help='field whose value names the output domain')
    p.add_argument('--domain', default='default', help='domain of records without --domain_field (default "default")')
    add_common_args(p)
    a = p.parse_args(argv)

    def sources():
        from foundry_ext.prep.sources import Source, domain_name, expand_inputs, is_jsonl_file
        out: list[Source] = []
        for spec in a.input:
            split, path = split_spec(spec, a.split)
            for f in expand_inputs([path], lambda q: is_jsonl_file(q) or _is_parquet(q)):
                kind = 'parquet' if f.suffix == '.parquet' else 'jsonl'
                if out and out[-1].kind == kind and out[-1].split == split:
                    out[-1].paths.append(f)
                else:
                    out.append(Source(kind, split, domain_name(a.domain), [f]))
        return out

    return run_cli(a, sources, text_field=a.text_field, domain_field=a.domain_field)


def hf(argv: list[str] | None = None) -> int:
    """Convert a Hugging Face dataset to packed, tokenized MDS."""
    p = argparse.ArgumentParser(prog='foundry-ext prep hf', description=_DOCS['hf'],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataset', required=True, help='save_to_disk folder, a local data file, or a hub name (online)')
    p.add_argument('--data_files', nargs='*', default=None, help='local data files (instead of / besides --dataset)')
    p.add_argument('--name', default=None, help='dataset configuration (hub)')
    p.add_argument('--split', default=None, help='convert only this split (default: all)')
    p.add_argument('--streaming', action='store_true', help='stream (never materialise) the dataset')
    p.add_argument('--text_field', default='text')
    p.add_argument('--domain_field', default=None)
    p.add_argument('--domain', default=None, help='output domain name (default: the dataset folder/name)')
    add_common_args(p)
    a = p.parse_args(argv)

    def sources():
        from foundry_ext.prep.sources import domain_name, hf_sources
        domain = domain_name(a.domain or Path(a.dataset.rstrip('/')).name.split('.')[0])
        files = ([a.dataset] if Path(a.dataset).is_file() else []) + list(a.data_files or [])
        return hf_sources(a.dataset, a.split, a.text_field, domain, a.domain_field, a.streaming,
                          name=a.name, data_files=files or None)

    return run_cli(a, sources, text_field=a.text_field, domain_field=a.domain_field)


def sft(argv: list[str] | None = None) -> int:
    """Convert prompt/response or chat-messages jsonl to MDS for the `sft` / LLM Foundry `finetuning` loaders."""
    p = argparse.ArgumentParser(prog='foundry-ext prep sft', description=_DOCS['sft'],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--input', required=True, nargs='+', help='[split=]path.jsonl (.gz/.zst too); default split train')
    p.add_argument('--tokenizer', required=True, help='local Hugging Face tokenizer folder')
    p.add_argument('--out', required=True, help='output root: <out>/<split>/ MDS + stats.json')
    p.add_argument('--overwrite', action='store_true')
    p.add_argument('--max_seq_len', type=int, default=2048)
    p.add_argument('--chat_template', default=None,
                   help="Jinja file or string, 'chatml' or 'tokenizer'; default: the tokenizer's, else ChatML")
    p.add_argument('--prompt_field', default='prompt')
    p.add_argument('--response_field', default='response')
    p.add_argument('--messages_field', default='messages')
    p.add_argument('--on_too_long', default='truncate', choices=['truncate', 'drop'])
    p.add_argument('--skip_bad_records', action='store_true',
                   help='skip bad records (counted, first ones shown) instead of stopping at them')
    p.add_argument('--compression', default=None)
    a = p.parse_args(argv)
    from foundry_ext.prep.finetuning import convert_finetuning, finetuning_table
    t0 = time.time()
    try:
        stats = convert_finetuning([split_spec(s, 'train') for s in a.input], a.tokenizer, a.out,
                                   max_seq_len=a.max_seq_len, chat_template=a.chat_template,
                                   prompt_field=a.prompt_field, response_field=a.response_field,
                                   messages_field=a.messages_field, on_too_long=a.on_too_long,
                                   skip_bad_records=a.skip_bad_records, overwrite=a.overwrite,
                                   compression=a.compression)
    except UserError as e:
        return exit_with(e)
    print(finetuning_table(stats))
    print(f'wrote {a.out} in {time.time() - t0:.1f}s (chat template: {stats["chat_template_name"]}); '
          f'counts in {Path(a.out) / "stats.json"}')
    return 0


KINDS: dict[str, Callable[[list[str] | None], int]] = {'text': text, 'jsonl': jsonl, 'hf': hf, 'sft': sft}
USAGE = 'usage: foundry-ext prep {text|jsonl|hf|sft} [options]  (--help after the kind lists them)'


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in KINDS:
        got = f'unknown prep kind {argv[0]!r}; ' if argv and not argv[0].startswith('-') else ''
        return exit_with(UserError(f"{got}{USAGE}"))
    return KINDS[argv[0]](argv[1:])
