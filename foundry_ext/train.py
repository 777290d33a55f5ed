"""The training command: validate everything, apply CPU fallbacks, hand over to LLM Foundry.

`scripts/train.py` is a two-line wrapper around :func:`main`, so
``composer scripts/train.py <yaml> key=value ...`` and ``python scripts/train.py ...`` behave
the same, single- or multi-process.
"""
from __future__ import annotations

import logging
import os
import sys

from foundry_ext.errors import UserError, exit_with

log = logging.getLogger('foundry_ext')

USAGE = 'usage: composer scripts/train.py <config.yaml> [key=value ...]'


def _rank() -> int:
    return int(os.environ.get('RANK', '0'))


def set_offline_defaults() -> None:
    """No hub, no cloud logging unless the user opts in through the environment."""
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    os.environ.setdefault('TRANSFORMERS_OFFLINE', os.environ['HF_HUB_OFFLINE'])
    os.environ.setdefault('WANDB_MODE', 'offline')
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')


def prepare(argv: list[str]) -> dict:
    """argv -> validated, machine-adjusted config dict (no heavy imports before validation)."""
    from foundry_ext import config
    if not argv or argv[0] in ('-h', '--help'):
        raise UserError(USAGE)
    cfg = config.load(argv[0], argv[1:])
    config.validate(cfg)
    import torch
    world = int(os.environ.get('WORLD_SIZE', '1'))
    notes = config.apply_fallbacks(cfg, cuda=torch.cuda.is_available(), flash_attn=config.has_flash_attn(),
                                   world_size=world)
    if _rank() == 0:
        for n in notes:
            print(f'foundry_ext: fallback: {n}', file=sys.stderr)
    return cfg


def main(argv: list[str] | None = None) -> int:
    set_offline_defaults()
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = prepare(argv)
    except UserError as e:
        return exit_with(e)
    from omegaconf import OmegaConf as om
    from llmfoundry.command_utils import train
    try:
        train(om.create(cfg))
    except UserError as e:  # raised by our components while building
        return exit_with(e)
    return 0
