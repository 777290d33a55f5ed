"""Convert a Hugging Face dataset to packed, tokenized MDS.

The same as `foundry-ext prep hf`; --help lists the options.
"""
import sys

from foundry_ext.commands.prep import hf

if __name__ == '__main__':
    sys.exit(hf())
