"""Convert a folder of per-domain text to packed, tokenized MDS (one dataset per domain/split).

    python data_prep/convert_text_to_mds.py --input data/corpus --tokenizer data/tokenizer \
        --out data/mds --concat_tokens 128
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundry_ext.errors import UserError, exit_with  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--input', required=True, help='folder with one sub-folder per domain')
    p.add_argument('--tokenizer', required=True, help='local HF tokenizer folder')
    p.add_argument('--out', required=True, help='output MDS root (written atomically)')
    p.add_argument('--concat_tokens', type=int, default=128, help='tokens per packed sample')
    p.add_argument('--compression', default=None, help='MDS compression, e.g. zstd')
    p.add_argument('--encoding_errors', default='strict', choices=['strict', 'replace', 'skip'],
                   help='what to do with non-UTF-8 input (default: stop with an error)')
    p.add_argument('--overwrite', action='store_true')
    a = p.parse_args(argv)
    from foundry_ext.data.mds import convert_to_mds
    t0 = time.time()
    try:
        stats = convert_to_mds(a.input, a.tokenizer, a.out, concat_tokens=a.concat_tokens,
                               compression=a.compression, encoding_errors=a.encoding_errors,
                               overwrite=a.overwrite)
    except UserError as e:
        return exit_with(e)
    total = 0
    for domain, splits in stats['domains'].items():
        for split, s in splits.items():
            total += s['tokens']
            print(f"{domain:>10}/{split:<5} {s['docs']:>7} docs -> {s['samples']:>7} samples "
                  f"({s['tokens']:>9} tokens)")
    dt = time.time() - t0
    print(f'wrote {a.out}: {total} tokens in {dt:.1f}s ({total / max(dt, 1e-9):,.0f} tokens/s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
