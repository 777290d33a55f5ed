"""The training command: validate everything, apply CPU fallbacks, resume, hand over to LLM Foundry.

``scripts/train.py`` and ``foundry-ext train`` call :func:`main`, so
``composer scripts/train.py <yaml> key=value ...``, ``python scripts/train.py ...`` and
``foundry-ext train ...`` behave the same, single- or multi-process.

Re-running a command resumes its run (``foundry_ext.checkpoint.resume``; ``autoresume=false``
opts out). Exit codes: 0 finished or already finished, 2 a user mistake (one ``error:`` line),
75 stopped by SIGTERM/SIGINT with a checkpoint saved (re-run to resume), 1 a failure inside
Composer / LLM Foundry (one line + the traceback's file), 128 + signal stopped
with nothing saved.
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
    from foundry_ext.finetune.config import route_packing
    cfg = load(argv[0], argv[1:])
    validate(cfg)
    notes = route_packing(cfg)  # packed SFT rows: models that keep the examples apart
    import torch
    notes += apply_fallbacks(cfg, cuda=torch.cuda.is_available(), flash_attn=has_flash_attn(),
                             world_size=env.world_size())
    notes = [n if n.startswith('packing:') else f'fallback: {n}' for n in notes]
    notes += [f'note: {n}' for n in model_checks(cfg)]
    _say(*notes)
    _plan_summary(cfg)
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


def _say(*lines: str) -> None:
    if env.rank() == 0:
        for line in lines:
            print(line if line.startswith('foundry_ext:') else f'foundry_ext: {line}', file=sys.stderr, flush=True)


def _decide(cfg: dict[str, Any], settings: Any) -> Any:
    """Rank 0 chooses the checkpoint (and tidies the save folder); every rank gets its decision."""
    from foundry_ext.checkpoint.resume import Decision, decide
    if env.world_size() <= 1:
        return decide(cfg, settings)
    env.init_distributed()
    import torch.distributed as tdist
    box: list[Any] = [decide(cfg, settings) if env.rank() == 0 else Decision()]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def _plan_summary(cfg: dict[str, Any]) -> None:
    """The planner's one line (rank 0, on a known device: GPUs); silent on CPU."""
    from foundry_ext.plan.summary import print_summary
    print_summary(cfg)


def main(argv: list[str] | None = None) -> int:
    env.set_offline_defaults()
    env.launcher_defaults()   # torchrun sets no NODE_RANK, which Composer needs
    debug, argv = guard.pop_debug(sys.argv[1:] if argv is None else argv)
    try:
        cfg = prepare(argv)
        from foundry_ext.checkpoint import integrity, resume
        settings = resume.resume_defaults(cfg, argv[0])
        _say(*settings.notes)
        decision = _decide(cfg, settings)
    except UserError as e:
        return exit_with(e)
    _say(*decision.lines)
    if decision.error:
        return exit_with(UserError(decision.error))
    if decision.finished:
        return 0
    integrity.SETTINGS.update(config=integrity.redact(cfg), verify=settings.integrity.verify,
                              trusted_globals=tuple(settings.integrity.trusted_globals))
    if decision.load_path:
        integrity.mark_verified(decision.load_path)   # rank 0 verified it a moment ago
    resume.apply(cfg, decision)
    import importlib
    importlib.import_module('llmfoundry.command_utils.train')   # loaded before the guard patches its log_config
    from foundry_ext.checkpoint.preempt import Preempted
    from foundry_ext.checkpoint.trainer import train
    try:
        # ---- bad-inputs guard: anything that fails inside Composer / LLM Foundry is one line + a log
        # (a UserError -- ours, or a checkpoint that does not fit -- is its line, exit 2)
        return guard.run(lambda: train(cfg, decision.pending_eval, decision.load_path), cfg, debug)
    except Preempted as p:       # BaseException: the guard lets it through
        _say(str(p))
        return p.code
    except KeyboardInterrupt:
        _say('interrupted (Ctrl-C twice): stopped at once; nothing was saved since the last checkpoint')
        return 130
