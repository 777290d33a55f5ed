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
    cfg = load(argv[0], argv[1:])
    validate(cfg)
    import torch
    notes = apply_fallbacks(cfg, cuda=torch.cuda.is_available(), flash_attn=has_flash_attn(),
                            world_size=env.world_size())
    model_notes = model_checks(cfg)
    if env.rank() == 0:
        for n in notes:
            print(f'foundry_ext: fallback: {n}', file=sys.stderr)
        for n in model_notes:
            print(f'foundry_ext: note: {n}', file=sys.stderr)
    return cfg


def model_checks(cfg: dict[str, Any]) -> list[str]:
    """HF model defaults (trust_remote_code false), LoRA checks, and the ``model_check`` callback when a
    run loads a checkpoint or trains adapters (parameter counts; the load_path fit). Returns notes."""
    from foundry_ext.checkpoint.hf import apply_hf_defaults
    from foundry_ext.finetune.lora import check_lora, lora_defaults
    model: dict[str, Any] = cfg['model'] if isinstance(cfg.get('model'), dict) else {}
    notes = apply_hf_defaults(model) + lora_defaults(model)
    check_lora(cfg)
    if cfg.get('load_path') or model.get('peft_config') is not None:
        cbs = cfg.get('callbacks')
        cbs = cfg['callbacks'] = dict(cbs) if isinstance(cbs, dict) else {}
        cbs.setdefault('model_check', {'load_path': cfg.get('load_path'),
                                       'strict': bool(cfg.get('load_strict_model_weights', True)),
                                       'ignore_keys': list(cfg.get('load_ignore_keys') or [])})
    return notes


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
