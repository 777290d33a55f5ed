"""Convert jsonl or parquet records to packed, tokenized MDS.

The same as `foundry-ext prep jsonl`; --help lists the options.
"""
import sys

from foundry_ext.commands.prep import jsonl

if __name__ == '__main__':
    sys.exit(jsonl())
