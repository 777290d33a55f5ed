"""Numeric ranges of a training config that LLM Foundry / Composer would reject late (or not at all).

Durations (``max_duration``, ``eval_interval``, ``save_interval``, the scheduler's ``t_*``) parse
and are positive; the learning rate and the other optimizer numbers are in range; batch sizes are
positive and the global batch divides over the processes (``WORLD_SIZE`` from the launcher); the
loader's sequence length fits the model's; the seed is what numpy accepts. One line each.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from foundry_ext import env
from foundry_ext.validation import is_number

_DURATION = re.compile(r'^\s*(-?\d+(?:\.\d+)?|-?\.\d+)\s*(ba|ep|tok|sp|dur)\s*$')
DURATION_HINT = 'write e.g. 500ba, 1ep or 10000000tok'


def parse_duration(value: Any) -> Optional[tuple[float, str]]:
    """``'500ba'`` -> (500.0, 'ba'); a bare int is epochs (Composer's rule); None if not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(value), 'ep'
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)), m.group(2)
    return None


def _duration(cfg: dict, key: str, where: str, problems: list[str], allow_zero: bool = False) -> Optional[tuple]:
    v = cfg.get(key)
    if v is None:
        return None
    d = parse_duration(v)
    if d is None:
        if isinstance(v, (str, int)) and not isinstance(v, bool):   # a wrong type is the schema's line
            problems.append(f'{where} {v!r} is not a duration; {DURATION_HINT}')
        return None
    if d[0] < 0 or (d[0] == 0 and not allow_zero):
        problems.append(f"{where} must be > 0, got {v!r}; {DURATION_HINT}")
        return None
    return d


def _number(section: dict, key: str, where: str, problems: list[str], low: float = 0.0,
            high: Optional[float] = None, high_open: bool = False) -> None:
    v = section.get(key)
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return
    if not is_number(v) or v < low or (high is not None and (v >= high if high_open else v > high)):
        rng = f'>= {low:g}' if high is None else f"in [{low:g}, {high:g}{')' if high_open else ']'}"
        problems.append(f'{where}.{key} must be {rng}, got {v!r}')


def check_optimizer(opt: Any, problems: list[str]) -> None:
    if not isinstance(opt, dict):
        return
    for key in ('lr', 'weight_decay', 'eps'):
        _number(opt, key, 'optimizer', problems)
    b = opt.get('betas')
    if isinstance(b, (list, tuple)):
        if len(b) != 2 or not all(is_number(x) and 0 <= x < 1 for x in b):
            problems.append(f'optimizer.betas must be two numbers in [0, 1), e.g. [0.9, 0.95], got {list(b)!r}')


def check_scheduler(cfg: dict, max_duration: Optional[tuple], problems: list[str]) -> None:
    sch = cfg.get('scheduler')
    if not isinstance(sch, dict):
        return
    warm = _duration(sch, 't_warmup', 'scheduler.t_warmup', problems, allow_zero=True)
    _duration(sch, 't_max', 'scheduler.t_max', problems)
    for key in ('alpha_f', 'alpha_i', 'alpha'):
        _number(sch, key, 'scheduler', problems)
    if warm and max_duration and warm[1] == max_duration[1] and warm[1] != 'dur' and warm[0] > max_duration[0]:
        problems.append(f"scheduler.t_warmup ({sch['t_warmup']}) is longer than max_duration "
                        f"({cfg['max_duration']}): the run would end before warm-up does")


def _positive(cfg: dict, key: str, problems: list[str], allow: tuple = ()) -> Optional[int]:
    v = cfg.get(key)
    if v is None or v in allow or isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if v <= 0:
        problems.append(f'{key} must be > 0, got {v!r}')
        return None
    return int(v) if v == int(v) else None


def check_batches(cfg: dict, problems: list[str], world_size: Optional[int] = None) -> None:
    world = env.world_size() if world_size is None else world_size
    g = _positive(cfg, 'global_train_batch_size', problems)
    _positive(cfg, 'device_train_batch_size', problems)
    _positive(cfg, 'device_train_microbatch_size', problems, allow=('auto',))
    _positive(cfg, 'device_eval_batch_size', problems)
    mb = cfg.get('device_train_microbatch_size')
    if isinstance(mb, str) and mb != 'auto':
        problems.append(f"device_train_microbatch_size must be a positive whole number or 'auto', got {mb!r}")
    if g is not None and world > 1 and g % world:
        lower, upper = g // world * world, (g // world + 1) * world
        problems.append(f'global_train_batch_size {g} does not divide over {world} processes (WORLD_SIZE); '
                        f"use a multiple of {world}, e.g. {lower or upper}{f' or {upper}' if lower else ''}")


def check_seq_len(cfg: dict, problems: list[str]) -> None:
    model = cfg.get('model')
    msl = model.get('max_seq_len') if isinstance(model, dict) else None
    if not isinstance(msl, int) or isinstance(msl, bool) or msl <= 0:
        return
    loaders = [('train_loader', cfg.get('train_loader')), ('eval_loader', cfg.get('eval_loader'))]
    loaders += [(f'eval_loaders[{i}]', ev) for i, ev in enumerate(cfg.get('eval_loaders') or [])
                if isinstance(cfg.get('eval_loaders'), list)]
    for where, ld in loaders:
        if not isinstance(ld, dict):
            continue
        inner = ld.get('dataset')
        ds: dict = inner if isinstance(inner, dict) else ld
        n = ds.get('max_seq_len')
        if isinstance(n, int) and not isinstance(n, bool) and n > msl:
            key = f'{where}.dataset.max_seq_len' if ds is not ld else f'{where}.max_seq_len'
            problems.append(f'{key} ({n}) is longer than model.max_seq_len ({msl}); the model cannot take '
                            'those samples: lower it or raise model.max_seq_len')


def range_problems(cfg: dict[str, Any], world_size: Optional[int] = None) -> list[str]:
    """Every numeric-range problem of a training config (one line each)."""
    problems: list[str] = []
    md = _duration(cfg, 'max_duration', 'max_duration', problems)
    for key in ('eval_interval', 'save_interval'):
        _duration(cfg, key, key, problems)
    check_optimizer(cfg.get('optimizer'), problems)
    check_scheduler(cfg, md, problems)
    check_batches(cfg, problems, world_size)
    check_seq_len(cfg, problems)
    seed = cfg.get('seed')
    if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed < 2 ** 32:
        problems.append(f'seed must be in [0, 2**32), got {seed}')
    return problems
