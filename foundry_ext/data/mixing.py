"""Curriculum data mixing: the pure core (numpy only; no torch, Composer or LLM Foundry).

Four pieces, each a plain object with a ``state_dict``:

* :class:`Schedule` -- mixture weights as a function of training progress. ``unit`` is
  ``batches``, ``tokens`` or ``fraction`` (of ``total``); ``interpolation`` is ``step``,
  ``linear`` or ``cosine`` between ``points`` (``{at, weights}``, ``at`` strictly
  increasing). Before the first point the first weights hold, after the last the last.
  Weights that do not sum to 1 are normalized (and :func:`parse_schedule` says so once);
  a stream left out of a point has weight 0 there.
* :func:`assign_streams` -- which stream global sample ``i`` comes from: a pure function of
  ``(seed, i)`` and the weights at ``i``'s progress (inverse CDF of a counter-based hash,
  so no random state is carried between samples).
* :class:`StreamOrder` -- each stream's own order: a permutation per (seed, stream, epoch)
  from mosaicml-streaming's shuffle algorithms, no repeats until the stream is exhausted,
  then the next epoch's permutation.
* :class:`Mixer` -- walks global batches in order: batch ``b`` is global samples
  ``[b*G, (b+1)*G)``; rank ``r`` of ``W`` takes the contiguous slice
  ``[r*G/W, (r+1)*G/W)`` of each, so every world size (and any number of DataLoader
  workers, which only read samples) sees the same global sequence. Its state is the
  position, the per-stream counts consumed, and the adaptive controller.
* :class:`Adaptive` -- optional online reweighting from per-stream training loss
  (exponentiated-gradient, as DoReMi / Group-DRO; excess over a reference loss when one is
  given), with EMA smoothing of the loss signal, a floor per stream, and a fixed ``lag``
  (in batches) between the step whose loss is seen and the first batch it affects, so
  prefetching loaders stay deterministic.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from foundry_ext.errors import UserError

UNITS = ('batches', 'tokens', 'fraction')
INTERPOLATIONS = ('step', 'linear', 'cosine')
SCHEDULE_KEYS = ('unit', 'interpolation', 'points', 'total')
ADAPTIVE_KEYS = ('eta', 'ema', 'floor', 'update_every', 'lag', 'reference')
# Presets -> mosaicml-streaming shuffle knobs (see README "Curriculum data mixing").
SHUFFLE_PRESETS: dict[str, dict[str, Any]] = {
    # one permutation over (almost) the whole stream: best randomness; needs the stream's
    # shards resident (local data, or a cache as big as the stream).
    'quality': {'shuffle_algo': 'py1e', 'shuffle_block_size': 1 << 22, 'num_canonical_nodes': 1},
    # streaming's default: shuffle within blocks of 2^18 samples spread over shards.
    'balanced': {'shuffle_algo': 'py1e', 'shuffle_block_size': 1 << 18, 'num_canonical_nodes': 1},
    # shuffle shard order, then samples within one shard: one shard at a time, least random.
    'fast': {'shuffle_algo': 'py1s', 'shuffle_block_size': 1 << 18, 'num_canonical_nodes': 1},
}
SHUFFLE_KEYS = ('preset', 'seed', 'shuffle_algo', 'shuffle_block_size', 'num_canonical_nodes')
SHUFFLE_ALGOS = ('py1e', 'py1br', 'py1s', 'py2s', 'naive', 'none')
_DUR = re.compile(r'^\s*(\d+(?:\.\d+)?)\s*(ba|tok)\s*$')
_M64 = (1 << 64) - 1


def _did_you_mean(key: str, choices) -> str:
    close = difflib.get_close_matches(str(key), list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ''


def _known_keys(cfg: dict, keys, where: str) -> None:
    for k in cfg:
        if k not in keys:
            raise UserError(f'unknown key {where}.{k}{_did_you_mean(k, keys)}')


def _choice(value: Any, choices, where: str) -> Any:
    if value not in choices:
        raise UserError(f'{where} must be one of {list(choices)}, got {value!r}{_did_you_mean(value, choices)}')
    return value


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ------------------------------------------------------------------------------ hashing


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer, vectorized over uint64 (wraps mod 2^64)."""
    with np.errstate(over='ignore'):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (e.g. (seed, stream) for streaming's shuffles)."""
    h = np.uint64(0x5EED)
    for p in parts:
        h = _mix64(np.asarray(h ^ np.uint64(int(p) & _M64), dtype=np.uint64))
    return int(h) & 0x7FFFFFFF


def uniforms(seed: int, indices: np.ndarray) -> np.ndarray:
    """U[0,1) for each global sample index, a pure function of (seed, index)."""
    key = _mix64(np.asarray([int(seed) & _M64], dtype=np.uint64))[0]
    z = _mix64(np.asarray(indices, dtype=np.uint64) ^ key)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def assign_streams(seed: int, indices: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Stream id of each global sample index under ``weights`` (one vector, or one row per index)."""
    u = uniforms(seed, indices)
    w = np.asarray(weights, dtype=np.float64)
    cum = np.cumsum(w, axis=-1)
    cum = cum / cum[..., -1:]
    if w.ndim == 1:
        out = np.searchsorted(cum, u, side='right')
    else:
        out = (u[:, None] >= cum).sum(axis=1)
    return np.minimum(out, w.shape[-1] - 1).astype(np.int64)


# ------------------------------------------------------------------------------ schedule


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
    if _num(v) and v > 0:
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
    _known_keys(cfg, SCHEDULE_KEYS, where)
    unit = _choice(cfg.get('unit', 'fraction'), UNITS, f'{where}.unit')
    interp = _choice(cfg.get('interpolation', 'linear'), INTERPOLATIONS, f'{where}.interpolation')
    total = None
    if cfg.get('total') is not None:
        total = parse_duration(cfg['total'], f'{where}.total')
    elif unit == 'fraction':
        raise UserError(f'{where}.total is required with unit fraction (the run length, e.g. '
                        f"total: 200ba, or total: ${{max_duration}} in the yaml)")
    points = cfg.get('points')
    if not isinstance(points, list) or not points:
        raise UserError(f'{where}.points must be a non-empty list of {{at, weights}}')
    ats, rows, notes = [], [], []
    for i, p in enumerate(points):
        pw = f'{where}.points[{i}]'
        if not isinstance(p, dict) or set(p) - {'at', 'weights'} or 'weights' not in p:
            raise UserError(f'{pw} must be a mapping {{at: <number>, weights: {{<stream>: <weight>}}}}')
        at = p.get('at', 0.0 if i == 0 else None)
        if not _num(at):
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
                raise UserError(f'{pw}.weights: unknown stream {name!r}{_did_you_mean(name, streams)}; '
                                f'streams are {list(streams)}')
            if not _num(v):
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


# ------------------------------------------------------------------------------ shuffle


def parse_shuffle(cfg: Any, where: str = 'shuffle') -> dict[str, Any]:
    """``{preset|raw knobs, seed}`` -> ``{seed, shuffle_algo, shuffle_block_size, num_canonical_nodes}``."""
    if cfg is None:
        cfg = {}
    if isinstance(cfg, bool):
        cfg = {} if cfg else {'shuffle_algo': 'none'}
    if not isinstance(cfg, dict):
        raise UserError(f'{where} must be a mapping like {{preset: balanced, seed: 17}}')
    _known_keys(cfg, SHUFFLE_KEYS, where)
    out = dict(SHUFFLE_PRESETS[_choice(cfg.get('preset', 'balanced'), SHUFFLE_PRESETS, f'{where}.preset')])
    for k in ('shuffle_algo', 'shuffle_block_size', 'num_canonical_nodes'):
        if cfg.get(k) is not None:
            out[k] = cfg[k]
    _choice(out['shuffle_algo'], SHUFFLE_ALGOS, f'{where}.shuffle_algo')
    for k in ('shuffle_block_size', 'num_canonical_nodes'):
        if not isinstance(out[k], int) or isinstance(out[k], bool) or out[k] <= 0:
            raise UserError(f'{where}.{k} must be a positive integer, got {out[k]!r}')
    seed = cfg.get('seed', 17)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f'{where}.seed must be an integer >= 0, got {seed!r}')
    out['seed'] = seed
    return out


class StreamOrder:
    """A stream's sample order: epoch ``e`` is a permutation seeded by (seed, stream, e)."""

    def __init__(self, shard_sizes: Sequence[int], seed: int, stream_index: int, shuffle: dict[str, Any]):
        self.shard_sizes = np.asarray(shard_sizes, dtype=np.int64)
        self.n = int(self.shard_sizes.sum())
        self.seed = derive_seed(seed, stream_index)
        self.shuffle = shuffle
        self._cache: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        p = self._cache.get(epoch)
        if p is None:
            algo = self.shuffle['shuffle_algo']
            if algo == 'none':
                p = np.arange(self.n, dtype=np.int64)
            else:
                from streaming.base.shuffle import get_shuffle
                p = np.asarray(get_shuffle(algo, self.shard_sizes, self.shuffle['num_canonical_nodes'],
                                           self.seed, epoch, self.shuffle['shuffle_block_size']),
                               dtype=np.int64)
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            self._cache[epoch] = p
        return p

    def take(self, start: int, count: int) -> np.ndarray:
        """Sample ids at positions ``start .. start+count-1`` of the endless epoch sequence."""
        pos = np.arange(start, start + count, dtype=np.int64)
        epochs, idx = pos // self.n, pos % self.n
        out = np.empty(count, dtype=np.int64)
        for e in np.unique(epochs):
            m = epochs == e
            out[m] = self.permutation(int(e))[idx[m]]
        return out


# ------------------------------------------------------------------------------ adaptive


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
    _known_keys(cfg, ADAPTIVE_KEYS, where)
    a = AdaptiveConfig(**{k: v for k, v in cfg.items() if v is not None})
    if not _num(a.eta) or a.eta <= 0:
        raise UserError(f'{where}.eta must be > 0, got {a.eta!r}')
    if not _num(a.ema) or not 0 <= a.ema < 1:
        raise UserError(f'{where}.ema must be in [0, 1), got {a.ema!r}')
    if not _num(a.floor) or not 0 <= a.floor * len(streams) < 1:
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
                raise UserError(f'{where}.reference: unknown stream {name!r}{_did_you_mean(name, streams)}')
            if not _num(v):
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


# ------------------------------------------------------------------------------ mixer


@dataclass
class BatchPlan:
    batch: int
    weights: np.ndarray       # (S,) weights used for this batch
    global_index: np.ndarray  # (G,)
    stream: np.ndarray        # (G,)
    sample: np.ndarray        # (G,) sample id within its stream

    def shard(self, rank: int, world: int) -> 'BatchPlan':
        per = len(self.global_index) // world
        sl = slice(rank * per, (rank + 1) * per)
        return BatchPlan(self.batch, self.weights, self.global_index[sl], self.stream[sl], self.sample[sl])


class Mixer:
    """Deterministic global sequence of (stream, sample) for a mixture; see the module doc."""

    SNAPSHOTS = 4096

    def __init__(self, streams: Sequence[str], shard_sizes: Sequence[Sequence[int]], schedule: Schedule,
                 shuffle: dict[str, Any], global_batch: int, seq_len: int,
                 adaptive: Optional[AdaptiveConfig] = None):
        self.streams = tuple(streams)
        if global_batch <= 0:
            raise UserError(f'global batch size must be > 0, got {global_batch}')
        self.seed = int(shuffle['seed'])
        self.schedule = schedule
        self.global_batch = int(global_batch)
        self.seq_len = int(seq_len)
        self.orders = [StreamOrder(sz, self.seed, i, shuffle) for i, sz in enumerate(shard_sizes)]
        for name, o in zip(self.streams, self.orders):
            if o.n == 0:
                raise UserError(f'stream {name!r} has no samples; remove it or convert data into it')
        self.sizes = np.asarray([o.n for o in self.orders], dtype=np.int64)
        self.adaptive = Adaptive(self.streams, adaptive) if adaptive else None
        self.next_batch = 0
        self.counts = np.zeros(len(self.streams), dtype=np.int64)
        self.target = np.zeros(len(self.streams))   # sum of the weights used: expected samples per stream
        self._snap: dict[int, tuple[np.ndarray, np.ndarray]] = {0: (self.counts.copy(), self.target.copy())}

    # weights
    def planned_weights(self, batch: int) -> np.ndarray:
        return self.schedule.weights_for_batch(batch, self.global_batch, self.seq_len)

    def weights(self, batch: int) -> np.ndarray:
        w = self.planned_weights(batch)
        return self.adaptive.apply(w, batch) if self.adaptive else w

    # walking
    def next(self) -> BatchPlan:
        """Plan the next global batch and advance the position."""
        b = self.next_batch
        w = self.weights(b)
        gi = np.arange(b * self.global_batch, (b + 1) * self.global_batch, dtype=np.int64)
        st = assign_streams(self.seed, gi, w)
        sample = np.empty_like(gi)
        for k in np.unique(st):
            m = st == k
            c = int(m.sum())
            sample[m] = self.orders[k].take(int(self.counts[k]), c)
            self.counts[k] += c
        self.target += w * self.global_batch
        self.next_batch = b + 1
        self._snap[self.next_batch] = (self.counts.copy(), self.target.copy())
        if len(self._snap) > self.SNAPSHOTS:
            self._snap.pop(min(self._snap))
        return BatchPlan(b, w, gi, st, sample)

    def epochs(self, counts: Optional[np.ndarray] = None) -> np.ndarray:
        """Completed epochs per stream (at ``counts``, default: the current position)."""
        return (self.counts if counts is None else counts) // self.sizes

    def counts_at(self, batch: int) -> np.ndarray:
        """Samples consumed per stream before ``batch``."""
        return self._at(batch)[0]

    def target_at(self, batch: int) -> np.ndarray:
        """Expected samples per stream before ``batch`` (sum of the weights used x global batch)."""
        return self._at(batch)[1]

    def _at(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        if batch in self._snap:
            c, t = self._snap[batch]
            return c.copy(), t.copy()
        raise UserError(f'mixer state at batch {batch} is not known (planned up to {self.next_batch}); '
                        'checkpoint at a batch boundary of the mixture loader')

    # state
    def state_dict(self, batch: Optional[int] = None) -> dict[str, Any]:
        """State to resume at global batch ``batch`` (default: the planning position)."""
        b = self.next_batch if batch is None else int(batch)
        counts, target = self._at(b)
        return {'version': 1, 'batch': b, 'counts': counts.tolist(), 'target': target.tolist(),
                'streams': list(self.streams),
                'seed': self.seed, 'global_batch': self.global_batch,
                'schedule': self.schedule.describe(),
                'adaptive': self.adaptive.state_dict() if self.adaptive else None}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        if list(s.get('streams', [])) != list(self.streams):
            raise UserError(f"checkpoint mixes streams {s.get('streams')} but the loader has {list(self.streams)}; "
                            'resume with the same streams')
        if int(s['global_batch']) != self.global_batch:
            raise UserError(f"checkpoint used global batch {s['global_batch']} but this run has {self.global_batch}; "
                            'exact resumption needs the same global batch size')
        if s.get('seed') != self.seed:
            raise UserError(f"checkpoint used shuffle seed {s.get('seed')} but this run has {self.seed}")
        self.next_batch = int(s['batch'])
        self.counts = np.asarray(s['counts'], dtype=np.int64)
        self.target = np.asarray(s['target'], dtype=np.float64)
        self._snap = {self.next_batch: (self.counts.copy(), self.target.copy())}
        if (s.get('adaptive') is None) != (self.adaptive is None):
            raise UserError('checkpoint and config disagree on adaptive mixing; resume with the same setting')
        if self.adaptive is not None:
            self.adaptive.load_state_dict(s['adaptive'])

    def rewind(self, batch: int) -> None:
        """Go back to a batch planned earlier (e.g. a new epoch iterator after prefetching ran ahead)."""
        self.counts, self.target = self._at(batch)
        self.next_batch = int(batch)
        self._snap = {k: v for k, v in self._snap.items() if k <= batch}
