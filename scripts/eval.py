"""Gauntlet eval: `composer scripts/eval.py yamls/eval/starter.yaml [key=value ...]` (or `python scripts/eval.py ...`)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundry_ext.gauntlet.command import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
