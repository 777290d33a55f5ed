"""The planner's one line at the start of every training run (rank 0, when the device is known).

``commands/train.py`` calls :func:`print_summary` with the config it is about to train (after the
CPU fallbacks, i.e. what really runs). The device is known when CUDA is: its name and total
memory come from torch, the GPU count from the launcher (``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``).
It never stops a run: a config the planner cannot size gets a one-line note instead.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Mapping, TextIO

from foundry_ext import env
from foundry_ext.errors import UserError


def detect_cuda() -> tuple[str, float] | None:
    """(device name, total bytes) of this process's GPU, or None without CUDA."""
    import torch
    if not torch.cuda.is_available():
        return None
    i = torch.cuda.current_device()
    return torch.cuda.get_device_name(i), float(torch.cuda.get_device_properties(i).total_memory)


def summary(cfg: Mapping[str, Any], device: tuple[str, float], world: int, per_node: int) -> str:
    from foundry_ext.plan import build, render
    cluster = build.detected_cluster(device[0], device[1], per_node, max(1, world // per_node))
    try:
        plan = build.make_plan(cfg, cluster, with_fixes=False)
    except UserError as e:
        return f'plan: not sized ({e})'
    line = render.summary_line(plan)
    if not plan.memory.fits:
        line += f'; see `foundry-ext plan <yaml> --gpus {per_node} --gpu <name>` for fixes'
    return line


def print_summary(cfg: Mapping[str, Any], detect: Callable[[], tuple[str, float] | None] | None = None,
                  out: TextIO | None = None) -> str | None:
    """Print the summary on rank 0 when the device is known; returns the line (None when silent)."""
    if env.rank() != 0:
        return None
    try:
        device = (detect or detect_cuda)()
    except Exception:   # a broken CUDA setup is train's to report, not the planner's
        return None
    if device is None:
        return None
    world = env.world_size()
    per_node = int(os.environ.get('LOCAL_WORLD_SIZE', world) or world)
    try:
        line = summary(cfg, device, world, per_node)
    except Exception as e:  # the summary must never stop a training run
        line = f'plan: not sized ({type(e).__name__}: {e})'
    print(f'foundry_ext: {line}', file=out or sys.stderr)
    return line
