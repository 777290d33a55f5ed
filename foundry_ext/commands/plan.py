"""``foundry-ext plan``: will a training config fit, how long will it take, what will it cost, and why
config X fits where Z runs out of memory (``--diff``).

    foundry-ext plan <train.yaml> [key=value ...] --gpus 8 --gpu h100-sxm [--nodes 4] [--tokens 1T]
                     [--mfu 0.45] [--usd-per-gpu-hour 2.5] [--host-ram-gib 1024] [--json]
    foundry-ext plan --diff a.yaml b.yaml [c.yaml ...] [key=value ...] --gpus 8 --gpu h100-sxm

The yaml goes through the same load + validation as ``train`` (the same messages); folders that do
not exist here (data, tokenizer) only become a note, since planning does not read them. A config
that does not fit is an answer, not an error: the exit code is 0 and the report lists the fixes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from foundry_ext import env
from foundry_ext.errors import UserError, exit_with

USAGE = ('usage: foundry-ext plan <config.yaml> [key=value ...] --gpu NAME [--gpus N] [--nodes M] [--tokens 26B] '
         '[--mfu 0.4] [--usd-per-gpu-hour 2.5] [--host-ram-gib 512] [--json] | --diff a.yaml b.yaml ...')
_VALUE_FLAGS = ('--gpus', '--nodes', '--tokens', '--mfu', '--usd-per-gpu-hour', '--host-ram-gib', '--gpu')
_PATH_PROBLEMS = (' does not exist', 'is not a local folder and the hub is off')


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, no usage dump
        raise UserError(f'{message}; {USAGE}')


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog='foundry-ext plan', description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument('args', nargs='*', help='training yaml(s) and key=value overrides')
    p.add_argument('--gpu', default=None, help='GPU type: h100-sxm, h200, a100-80gb, a100-40gb, b200, ...')
    p.add_argument('--gpus', type=int, default=1, help='GPUs per node (default 1)')
    p.add_argument('--nodes', type=int, default=1, help='nodes (default 1)')
    p.add_argument('--tokens', default=None, help='tokens to train (26B, 1T); default: from max_duration')
    p.add_argument('--mfu', type=float, default=None, help='MFU to assume (default: a prior per GPU and size)')
    p.add_argument('--usd-per-gpu-hour', type=float, default=None, dest='usd')
    p.add_argument('--host-ram-gib', type=float, default=None, dest='host_ram',
                   help='host RAM per node, for a host-memory verdict')
    p.add_argument('--ignore-key', action='append', default=[], dest='ignore',
                   help='plan as if this key had no memory effect (repeatable)')
    p.add_argument('--diff', action='store_true', help='compare configs term by term (the first against each other)')
    p.add_argument('--json', action='store_true', help='print the plan as JSON')
    return p


def _validate(cfg: dict[str, Any]) -> list[str]:
    """``train``'s validation; returns notes for folders missing here (they do not change memory)."""
    from foundry_ext.config.validate import problems_of
    from foundry_ext.validation import ConfigError
    problems = problems_of(cfg)
    paths = [p for p in problems if any(s in p for s in _PATH_PROBLEMS)]
    others = [p for p in problems if p not in paths]   # missing folders do not change memory: notes, below
    if others:
        raise ConfigError([f'invalid config: {others[0]}'] if len(others) == 1 else others)
    return [f'train would refuse this config here: {p}' for p in paths[:1]] + \
        ([f'... and {len(paths) - 1} more missing folder(s)'] if len(paths) > 1 else [])


def _refuse_eval_config(path: str, cfg: dict[str, Any]) -> None:
    """An eval yaml (``foundry-ext eval``, LLM Foundry's scripts/eval) has no training loop to size."""
    if 'train_loader' not in cfg and ('icl_tasks' in cfg or 'models' in cfg or 'eval_gauntlet' in cfg):
        raise UserError(f'{path} is an eval config (icl_tasks, no train_loader): plan sizes training runs; plan '
                        f'the training yaml of the model instead, e.g. foundry-ext plan yamls/pretrain/125m.yaml '
                        f'--gpu NAME')


def _join_negative(argv: list[str]) -> list[str]:
    """``--tokens -5B`` -> ``--tokens=-5B``, so a negative value gets its own message, not argparse's."""
    out: list[str] = []
    it = iter(argv)
    for x in it:
        if x in _VALUE_FLAGS:
            nxt = next(it, None)
            out.append(x if nxt is None else f'{x}={nxt}')
        else:
            out.append(x)
    return out


def run(argv: list[str]) -> str:
    from foundry_ext.config.load import load
    from foundry_ext.plan import build, render
    from foundry_ext.plan.config import PlanConfig
    from foundry_ext.plan.memory import GiB
    a = parser().parse_intermixed_args(_join_negative(argv))
    yamls = [x for x in a.args if '=' not in x or Path(x).is_file()]
    overrides = [x for x in a.args if x not in yamls]
    if not yamls:
        raise UserError(USAGE)
    if a.diff and len(yamls) < 2:
        raise UserError('--diff needs at least two configs: foundry-ext plan --diff a.yaml b.yaml --gpu NAME')
    if not a.diff and len(yamls) > 1:
        raise UserError(f'one config at a time (got {len(yamls)}); to compare them use --diff')
    if a.gpu is None:
        from foundry_ext.throughput.hardware import GPU_MEMORY_GIB
        raise UserError(f'pass --gpu NAME (known: {", ".join(GPU_MEMORY_GIB)})')
    opts = PlanConfig(gpu=a.gpu, gpus=a.gpus, nodes=a.nodes, tokens=a.tokens, mfu=a.mfu, usd_per_gpu_hour=a.usd,
                      host_ram_gb=a.host_ram, ignore_keys=list(a.ignore))
    cluster = build.cluster_of(opts)
    plans, cfgs = [], []
    for path in yamls:
        cfg = load(path, overrides)
        _refuse_eval_config(path, cfg)
        notes = _validate(cfg)
        p = build.make_plan(cfg, cluster, opts.mfu, opts.token_count, opts.usd_per_gpu_hour,
                            opts.host_ram_gb * GiB if opts.host_ram_gb else None, tuple(opts.ignore_keys),
                            with_fixes=not a.diff)
        p.notes = notes + p.notes
        plans.append((path, p))
        cfgs.append(cfg)
    if a.json:
        if a.diff:
            return json.dumps({'configs': yamls, 'plans': [build.to_dict(p) for _, p in plans],
                               'changes': [[list(c) for c in render.config_changes(cfgs[0], c)] for c in cfgs[1:]]},
                              indent=1, default=str)
        return json.dumps(build.to_dict(plans[0][1]), indent=1, default=str)
    if a.diff:
        return render.diff(plans, cfgs)
    return render.text(plans[0][1])


def main(argv: list[str] | None = None) -> int:
    env.set_offline_defaults()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ('-h', '--help'):
        parser().print_help()
        return 0
    try:
        out = run(argv)
    except UserError as e:
        return exit_with(e)
    print(out)
    return 0
