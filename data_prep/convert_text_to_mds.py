"""Convert text to packed, tokenized MDS (one dataset per domain/split).

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
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundry_ext.data.prep_cli import add_common_args, run_cli, split_spec  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--input', required=True, nargs='+',
                   help='a corpus folder with one sub-folder per domain; or, with --domain, text files, '
                        'folders and globs ([split=]path)')
    p.add_argument('--domain', default=None,
                   help='treat --input as plain text files/folders/globs, all of this domain')
    p.add_argument('--split', default='train', help='split for --domain inputs without split= (default train)')
    add_common_args(p)
    a = p.parse_args(argv)

    def sources():
        from foundry_ext.data.mds import discover, plan_sources
        from foundry_ext.data.sources import Source, domain_name, expand_inputs, is_jsonl_file, is_text_file
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


if __name__ == '__main__':
    sys.exit(main())
