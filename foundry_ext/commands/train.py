"""The training command: validate everything, apply CPU fallbacks, hand over to LLM Foundry.

``scripts/train.py`` and ``foundry-ext train`` call :func:`main`, so
``composer scripts/train.py <yaml> key=value ...``, ``python scripts/train.py ...`` and
``foundry-ext train ...`` behave the same, single- or multi-process.
"""
from __future__ import annotations

import logging
import sys
from typing import Any

from foundry_ext import env
from foundry_ext.errors import UserError, exit_with

log = logging.getLogger('foundry_ext')

USAGE = 'usage: composer scripts/train.py <config.yaml> [key=value ...]'


def prepare(argv: list[str]) -> dict[str, Any]:
    """argv -> validated, machine-adjusted config dict (no heavy imports before validation)."""
    from foundry_ext.config.fallbacks import apply_fallbacks, has_flash_attn
    from foundry_ext.config.load import load
    from foundry_ext.config.validate import validate
    if not argv or argv[0] in ('-h', '--help'):
        raise UserError(USAGE)
    from foundry_ext.finetune.config import route_packing
    cfg = load(argv[0], argv[1:])
    validate(cfg)
    notes = route_packing(cfg)  # packed SFT rows: models that keep the examples apart
    import torch
    notes += apply_fallbacks(cfg, cuda=torch.cuda.is_available(), flash_attn=has_flash_attn(),
                             world_size=env.world_size())
    if env.rank() == 0:
        for n in notes:
            print(f"foundry_ext: {'' if n.startswith('packing:') else 'fallback: '}{n}", file=sys.stderr)
    return cfg


def main(argv: list[str] | None = None) -> int:
    env.set_offline_defaults()
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = prepare(argv)
    except UserError as e:
        return exit_with(e)
    from llmfoundry.command_utils import train
    from omegaconf import OmegaConf as om
    try:
        train(om.create(cfg))
    except UserError as e:  # raised by our components while building
        return exit_with(e)
    return 0
