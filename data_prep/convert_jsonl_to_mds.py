"""Convert jsonl or parquet records to packed, tokenized MDS.

    python data_prep/convert_jsonl_to_mds.py --input 'raw/*.jsonl.gz' val=raw/val.parquet \
        --text_field text --domain_field source --tokenizer data/tokenizer --out data/mds_web

--input takes files, folders (searched for .jsonl/.ndjson/.parquet, also .gz/.zst) and
globs, each optionally prefixed with its split (`val=...`; default --split). With
--domain_field every distinct value of that field becomes its own MDS dataset
<out>/<value>/<split>/ (records without it go to --domain). A line that is not JSON or lacks
the text field is skipped, counted and shown with its line number; --strict stops there.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundry_ext.data.prep_cli import add_common_args, run_cli, split_spec  # noqa: E402


def _is_parquet(p: Path) -> bool:
    return p.is_file() and p.suffix == '.parquet' and not p.name.startswith('.')


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--input', required=True, nargs='+', help='[split=]file, folder or glob of .jsonl / .parquet')
    p.add_argument('--split', default='train', help='split for inputs without split= (default train)')
    p.add_argument('--text_field', default='text', help='field (column) holding the document text')
    p.add_argument('--domain_field', default=None, help='field whose value names the output domain')
    p.add_argument('--domain', default='default', help='domain of records without --domain_field (default "default")')
    add_common_args(p)
    a = p.parse_args(argv)

    def sources():
        from foundry_ext.data.sources import Source, domain_name, expand_inputs, is_jsonl_file
        out = []
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


if __name__ == '__main__':
    sys.exit(main())
