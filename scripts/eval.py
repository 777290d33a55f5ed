"""Gauntlet eval: `composer scripts/eval.py yamls/eval/starter.yaml [key=value ...]`.

Also `python scripts/eval.py ...` or `foundry-ext eval ...`.
"""
import sys

from foundry_ext.commands.eval import main

if __name__ == '__main__':
    sys.exit(main())
