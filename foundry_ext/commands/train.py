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
from foundry_ext.commands import guard
from foundry_ext.errors import UserError, exit_with

log = logging.getLogger('foundry_ext')

USAGE = 'usage: composer scripts/train.py <config.yaml> [key=value ...] [--debug]'


def prepare(argv: list[str]) -> dict[str, Any]:
    """argv -> validated, machine-adjusted config dict (no heavy imports before validation)."""
    from foundry_ext.config.fallbacks import apply_fallbacks, has_flash_attn
    from foundry_ext.config.load import load
    from foundry_ext.config.validate import validate
    if not argv or argv[0] in ('-h', '--help'):
        raise UserError(USAGE)
    cfg = load(argv[0], argv[1:])
    validate(cfg)
    import torch
    notes = apply_fallbacks(cfg, cuda=torch.cuda.is_available(), flash_attn=has_flash_attn(),
                            world_size=env.world_size())
    if env.rank() == 0:
        for n in notes:
            print(f'foundry_ext: fallback: {n}', file=sys.stderr)
    _plan_summary(cfg)
    return cfg


def _plan_summary(cfg: dict[str, Any]) -> None:
    """The planner's one line (rank 0, on a known device: GPUs); silent on CPU."""
    from foundry_ext.plan.summary import print_summary
    print_summary(cfg)


def main(argv: list[str] | None = None) -> int:
    env.set_offline_defaults()
    debug, argv = guard.pop_debug(sys.argv[1:] if argv is None else argv)
    try:
        cfg = prepare(argv)
    except UserError as e:
        return exit_with(e)
    from llmfoundry.command_utils import train
    from omegaconf import OmegaConf as om
    # ---- bad-inputs guard: anything that fails inside Composer / LLM Foundry is one line + a log
    return guard.run(lambda: train(om.create(cfg)), cfg, debug)
