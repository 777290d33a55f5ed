"""Adaptive mixing: online reweighting from per-stream training loss (pure numpy).

Exponentiated-gradient, as DoReMi / Group-DRO (excess over a reference loss when one is given),
with EMA smoothing of the loss signal, a floor per stream, and a fixed ``lag`` (in batches)
between the step whose loss is seen and the first batch it affects, so prefetching loaders stay
deterministic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from foundry_ext.errors import UserError
from foundry_ext.validation import did_you_mean, is_number, known_keys

ADAPTIVE_KEYS = ('eta', 'ema', 'floor', 'update_every', 'lag', 'reference')



@dataclass
class AdaptiveConfig:
    eta: float = 1.0            # step size of the exponentiated-gradient update
    ema: float = 0.9            # smoothing of the per-stream loss signal
    floor: float = 0.05         # minimum weight of every stream the schedule gives weight > 0
    update_every: int = 10      # batches between weight updates
    lag: int = 8                # batches between the last step seen and the first batch affected
    reference: Optional[dict[str, float]] = None   # per-stream reference loss -> excess loss (DoReMi)


def parse_adaptive(cfg: Any, streams: Sequence[str], where: str = 'adaptive') -> Optional[AdaptiveConfig]:
    if cfg in (None, False):
        return None
    if cfg is True:
        cfg = {}
    if not isinstance(cfg, dict):
        raise UserError(f'{where} must be a mapping like {{eta: 1.0, floor: 0.05}} (or omitted)')
    known_keys(cfg, ADAPTIVE_KEYS, where)
    a = AdaptiveConfig(**{k: v for k, v in cfg.items() if v is not None})
    if not is_number(a.eta) or a.eta <= 0:
        raise UserError(f'{where}.eta must be > 0, got {a.eta!r}')
    if not is_number(a.ema) or not 0 <= a.ema < 1:
        raise UserError(f'{where}.ema must be in [0, 1), got {a.ema!r}')
    if not is_number(a.floor) or not 0 <= a.floor * len(streams) < 1:
        raise UserError(f'{where}.floor must be >= 0 and floor x {len(streams)} streams < 1, got {a.floor!r}')
    for k in ('update_every', 'lag'):
        v = getattr(a, k)
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if k == 'update_every' else 0):
            raise UserError(f'{where}.{k} must be an integer >= {1 if k == "update_every" else 0}, got {v!r}')
    if a.reference is not None:
        if not isinstance(a.reference, dict):
            raise UserError(f'{where}.reference must map stream -> reference loss')
        for name, v in a.reference.items():
            if name not in streams:
                raise UserError(f'{where}.reference: unknown stream {name!r}{did_you_mean(name, streams)}')
            if not is_number(v):
                raise UserError(f'{where}.reference.{name} must be a number, got {v!r}')
    return a


class AdaptiveNotReady(UserError):
    pass


@dataclass
class Adaptive:
    """Online reweighting. Feed :meth:`observe` once per training step, in order.

    Every ``update_every`` steps: ``ema_s <- ema*ema_s + (1-ema)*loss_s`` (per stream seen),
    signal ``g_s = ema_s - reference_s`` (or ``ema_s``), ``logw_s += eta*(g_s - mean g)/mean|g|``
    (clipped to +-10). The new log-weights apply from batch ``step + 1 + lag``. The weight of
    batch ``b`` is ``(1 - m*floor) * normalize(prior_b * exp(logw)) + floor`` on the ``m``
    streams whose prior (schedule) weight is > 0.
    """
    streams: tuple[str, ...]
    cfg: AdaptiveConfig
    logw: np.ndarray = field(init=False)
    ema_loss: np.ndarray = field(init=False)
    acc_sum: np.ndarray = field(init=False)
    acc_cnt: np.ndarray = field(init=False)
    observed_through: int = -1
    versions: list = field(default_factory=list)   # [(effective_from_batch, logw list)]

    def __post_init__(self):
        k = len(self.streams)
        self.logw = np.zeros(k)
        self.ema_loss = np.full(k, np.nan)
        self.acc_sum = np.zeros(k)
        self.acc_cnt = np.zeros(k)
        ref = self.cfg.reference or {}
        self.reference = np.asarray([float(ref.get(s, 0.0)) for s in self.streams])

    def observe(self, step: int, loss_sum: Sequence[float], count: Sequence[float]) -> bool:
        """Per-stream sums of per-sample loss and sample counts of training step ``step``
        (summed over ranks). Returns True when the weights were updated."""
        if step != self.observed_through + 1:
            raise UserError(f'adaptive mixing saw step {step} after step {self.observed_through}; '
                            'steps must be observed in order (is mix_logger registered once?)')
        self.acc_sum += np.asarray(loss_sum, dtype=np.float64)
        self.acc_cnt += np.asarray(count, dtype=np.float64)
        self.observed_through = step
        if (step + 1) % self.cfg.update_every:
            return False
        seen = self.acc_cnt > 0
        mean = np.where(seen, self.acc_sum / np.maximum(self.acc_cnt, 1), np.nan)
        first = seen & np.isnan(self.ema_loss)
        self.ema_loss[first] = mean[first]
        upd = seen & ~first
        self.ema_loss[upd] = self.cfg.ema * self.ema_loss[upd] + (1 - self.cfg.ema) * mean[upd]
        self.acc_sum[:] = 0
        self.acc_cnt[:] = 0
        known = ~np.isnan(self.ema_loss)
        if known.sum() >= 2:
            g = self.ema_loss[known] - self.reference[known]
            scale = max(float(np.mean(np.abs(g))), 1e-8)
            self.logw[known] += self.cfg.eta * (g - g.mean()) / scale
            np.clip(self.logw, -10.0, 10.0, out=self.logw)
            self.logw -= self.logw[known].mean()
        self.versions.append((step + 1 + self.cfg.lag, self.logw.tolist()))
        return True

    def logw_for_batch(self, batch: int) -> np.ndarray:
        need = batch - 1 - self.cfg.lag
        if need > self.observed_through:
            raise AdaptiveNotReady(
                f'adaptive mixing: batch {batch} needs the training loss of step {need}, but only steps '
                f'<= {self.observed_through} were seen; add the mix_logger callback, or raise adaptive.lag '
                f'above num_workers x prefetch_factor ({self.cfg.lag} now)')
        out = np.zeros(len(self.streams))
        for eff, lw in self.versions:   # few versions; newest applicable wins
            if eff <= batch:
                out = np.asarray(lw)
            else:
                break
        return out

    def apply(self, prior: np.ndarray, batch: int) -> np.ndarray:
        on = prior > 0
        w = prior * np.exp(self.logw_for_batch(batch))
        w = w / w.sum()
        f = self.cfg.floor
        return (1.0 - f * on.sum()) * w + f * on

    def state_dict(self) -> dict[str, Any]:
        return {'logw': self.logw.tolist(), 'ema_loss': [None if math.isnan(x) else x for x in self.ema_loss],
                'acc_sum': self.acc_sum.tolist(), 'acc_cnt': self.acc_cnt.tolist(),
                'observed_through': self.observed_through, 'versions': [[e, list(w)] for e, w in self.versions]}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.logw = np.asarray(s['logw'], dtype=np.float64)
        self.ema_loss = np.asarray([np.nan if x is None else x for x in s['ema_loss']], dtype=np.float64)
        self.acc_sum = np.asarray(s['acc_sum'], dtype=np.float64)
        self.acc_cnt = np.asarray(s['acc_cnt'], dtype=np.float64)
        self.observed_through = int(s['observed_through'])
        self.versions = [(int(e), list(w)) for e, w in s['versions']]
