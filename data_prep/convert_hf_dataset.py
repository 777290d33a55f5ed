"""Convert a Hugging Face dataset to packed, tokenized MDS.

    # a folder written by Dataset.save_to_disk / DatasetDict.save_to_disk (all its splits):
    python data_prep/convert_hf_dataset.py --dataset data/my_ds --tokenizer data/tokenizer --out data/mds_ds
    # local data files through datasets' json/parquet/csv/text builders:
    python data_prep/convert_hf_dataset.py --dataset raw/part-0.parquet --data_files raw/part-1.parquet ...
    # the hub, only when online (HF_HUB_OFFLINE unset), streamed:
    python data_prep/convert_hf_dataset.py --dataset allenai/c4 --name en --split validation --streaming ...

Each dataset split becomes <out>/<domain>/<split>/ (--split picks one); --domain_field
splits by a column instead of one --domain.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundry_ext.data.prep_cli import add_common_args, run_cli  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        from foundry_ext.data.sources import domain_name, hf_sources
        domain = domain_name(a.domain or Path(a.dataset.rstrip('/')).name.split('.')[0])
        files = ([a.dataset] if Path(a.dataset).is_file() else []) + list(a.data_files or [])
        return hf_sources(a.dataset, a.split, a.text_field, domain, a.domain_field, a.streaming,
                          name=a.name, data_files=files or None)

    return run_cli(a, sources, text_field=a.text_field, domain_field=a.domain_field)


if __name__ == '__main__':
    sys.exit(main())
