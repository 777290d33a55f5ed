"""Train: `composer scripts/train.py <yaml> [key=value ...]` (or `python scripts/train.py ...`)."""
import sys

from foundry_ext.commands.train import main

if __name__ == '__main__':
    sys.exit(main())
