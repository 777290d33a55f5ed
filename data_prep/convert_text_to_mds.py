"""Convert text to packed, tokenized MDS (one dataset per domain/split).

The same as `foundry-ext prep text`; --help lists the options.
"""
import sys

from foundry_ext.commands.prep import text

if __name__ == '__main__':
    sys.exit(text())
