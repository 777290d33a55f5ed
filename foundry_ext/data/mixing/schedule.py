"""Mixture weights as a function of training progress (pure numpy).

``unit`` is ``batches``, ``tokens`` or ``fraction`` (of ``total``); ``interpolation`` is ``step``,
``linear`` or ``cosine`` between ``points`` (``{at, weights}``, ``at`` strictly increasing). Before
the first point the first weights hold, after the last the last. Weights that do not sum to 1 are
normalized (and :func:`parse_schedule` says so once); a stream left out of a point has weight 0 there.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from foundry_ext.errors import UserError
from foundry_ext.validation import choice, did_you_mean, is_number, known_keys

UNITS = ('batches', 'tokens', 'fraction')
INTERPOLATIONS = ('step', 'linear', 'cosine')
SCHEDULE_KEYS = ('unit', 'interpolation', 'points', 'total')
_DUR = re.compile(r'^\s*(\d+(?:\.\d+)?)\s*(ba|tok)\s*$')


@dataclass
class Schedule:
    streams: tuple[str, ...]
    unit: str
    interpolation: str
    at: np.ndarray                 # (P,) strictly increasing, in `unit`
    weights: np.ndarray            # (P, S), rows sum to 1
    total: Optional[tuple[float, str]] = None   # (value, 'ba'|'tok'), needed for unit fraction

    def progress(self, batch: int, global_batch: int, seq_len: int) -> float:
        """Training progress at the start of ``batch``, in ``unit``."""
        if self.unit == 'batches':
            return float(batch)
        if self.unit == 'tokens':
            return float(batch) * global_batch * seq_len
        value, kind = self.total  # type: ignore[misc]
        total_batches = value if kind == 'ba' else value / (global_batch * seq_len)
        return float(batch) / max(total_batches, 1e-12)

    def weights_at(self, x: float) -> np.ndarray:
        at, w = self.at, self.weights
        if x <= at[0] or len(at) == 1:
            return w[0].copy()
        if x >= at[-1]:
            return w[-1].copy()
        k = int(np.searchsorted(at, x, side='right')) - 1
        if self.interpolation == 'step':
            return w[k].copy()
        t = (x - at[k]) / (at[k + 1] - at[k])
        if self.interpolation == 'cosine':
            t = 0.5 * (1.0 - math.cos(math.pi * t))
        out = (1.0 - t) * w[k] + t * w[k + 1]
        return out / out.sum()

    def weights_for_batch(self, batch: int, global_batch: int, seq_len: int) -> np.ndarray:
        return self.weights_at(self.progress(batch, global_batch, seq_len))

    def describe(self) -> dict[str, Any]:
        return {'unit': self.unit, 'interpolation': self.interpolation, 'streams': list(self.streams),
                'at': self.at.tolist(), 'weights': self.weights.tolist(),
                'total': list(self.total) if self.total else None}


def parse_duration(v: Any, where: str) -> tuple[float, str]:
    if is_number(v) and v > 0:
        return float(v), 'ba'
    m = _DUR.match(v) if isinstance(v, str) else None
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"{where} must be a positive duration like 200ba or 3000000tok, got {v!r}")
    return float(m.group(1)), m.group(2)


def parse_schedule(cfg: Any, streams: Sequence[str], where: str = 'schedule') -> tuple[Schedule, list[str]]:
    """Validate a schedule mapping; returns the schedule and notes (normalizations) to print once."""
    streams = tuple(streams)
    if not isinstance(cfg, dict):
        raise UserError(f'{where} must be a mapping with unit, interpolation and points')
    known_keys(cfg, SCHEDULE_KEYS, where)
    unit = choice(cfg.get('unit', 'fraction'), UNITS, f'{where}.unit')
    interp = choice(cfg.get('interpolation', 'linear'), INTERPOLATIONS, f'{where}.interpolation')
    total = None
    if cfg.get('total') is not None:
        total = parse_duration(cfg['total'], f'{where}.total')
    elif unit == 'fraction':
        raise UserError(f'{where}.total is required with unit fraction (the run length, e.g. '
                        f"total: 200ba, or total: ${{max_duration}} in the yaml)")
    points = cfg.get('points')
    if not isinstance(points, list) or not points:
        raise UserError(f'{where}.points must be a non-empty list of {{at, weights}}')
    ats: list[float] = []
    rows: list[np.ndarray] = []
    notes: list[str] = []
    for i, p in enumerate(points):
        pw = f'{where}.points[{i}]'
        if not isinstance(p, dict) or set(p) - {'at', 'weights'} or 'weights' not in p:
            raise UserError(f'{pw} must be a mapping {{at: <number>, weights: {{<stream>: <weight>}}}}')
        at = p.get('at', 0.0 if i == 0 else None)
        if not is_number(at):
            raise UserError(f'{pw}.at must be a number, got {at!r}')
        if unit == 'fraction' and not 0.0 <= at <= 1.0:
            raise UserError(f'{pw}.at = {at} is outside [0, 1] for unit fraction')
        if at < 0:
            raise UserError(f'{pw}.at = {at} is negative; {unit} start at 0')
        if total is not None and unit != 'fraction' and total[1] == {'batches': 'ba', 'tokens': 'tok'}[unit] \
                and at > total[0]:
            raise UserError(f'{pw}.at = {at} is past {where}.total = {total[0]:g} {unit}')
        if ats and at <= ats[-1]:
            raise UserError(f'{pw}.at = {at} does not increase (previous point is at {ats[-1]}); '
                            'points must be strictly increasing')
        w = p['weights']
        if not isinstance(w, dict) or not w:
            raise UserError(f'{pw}.weights must be a mapping {{<stream>: <weight>}}')
        row = np.zeros(len(streams))
        for name, v in w.items():
            if name not in streams:
                raise UserError(f'{pw}.weights: unknown stream {name!r}{did_you_mean(name, streams)}; '
                                f'streams are {list(streams)}')
            if not is_number(v):
                raise UserError(f'{pw}.weights.{name} must be a number, got {v!r}')
            if v < 0:
                raise UserError(f'{pw}.weights.{name} = {v} is negative; weights must be >= 0')
            row[streams.index(name)] = float(v)
        s = row.sum()
        if s <= 0:
            raise UserError(f'{pw}.weights are all zero; give at least one stream a positive weight')
        if abs(s - 1.0) > 1e-6:
            notes.append(f'{pw} weights sum to {s:g}')
        ats.append(float(at))
        rows.append(row / s)
    if notes:
        notes = [f'mix {where}: normalized weights to sum to 1 ({"; ".join(notes)})']
    sched = Schedule(streams, unit, interp, np.asarray(ats), np.stack(rows), total)
    return sched, notes
