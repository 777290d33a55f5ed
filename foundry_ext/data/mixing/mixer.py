"""Curriculum data mixing: the pure core (numpy only; no torch, Composer or LLM Foundry).

The pieces, each a plain object with a ``state_dict``:

* :class:`~foundry_ext.data.mixing.schedule.Schedule` -- mixture weights as a function of
  training progress (``schedule.py``).
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
* :class:`~foundry_ext.data.mixing.adaptive.Adaptive` (``adaptive.py``) -- optional online reweighting
  from per-stream training loss
  (exponentiated-gradient, as DoReMi / Group-DRO; excess over a reference loss when one is
  given), with EMA smoothing of the loss signal, a floor per stream, and a fixed ``lag``
  (in batches) between the step whose loss is seen and the first batch it affects, so
  prefetching loaders stay deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from foundry_ext.data.mixing.adaptive import Adaptive, AdaptiveConfig
from foundry_ext.data.mixing.schedule import Schedule
from foundry_ext.errors import UserError
from foundry_ext.validation import choice, known_keys

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
_M64 = (1 << 64) - 1



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
    h: np.ndarray | np.uint64 = np.uint64(0x5EED)
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


# ------------------------------------------------------------------------------ shuffle


def parse_shuffle(cfg: Any, where: str = 'shuffle') -> dict[str, Any]:
    """``{preset|raw knobs, seed}`` -> ``{seed, shuffle_algo, shuffle_block_size, num_canonical_nodes}``."""
    if cfg is None:
        cfg = {}
    if isinstance(cfg, bool):
        cfg = {} if cfg else {'shuffle_algo': 'none'}
    if not isinstance(cfg, dict):
        raise UserError(f'{where} must be a mapping like {{preset: balanced, seed: 17}}')
    known_keys(cfg, SHUFFLE_KEYS, where)
    out = dict(SHUFFLE_PRESETS[choice(cfg.get('preset', 'balanced'), SHUFFLE_PRESETS, f'{where}.preset')])
    for k in ('shuffle_algo', 'shuffle_block_size', 'num_canonical_nodes'):
        if cfg.get(k) is not None:
            out[k] = cfg[k]
    choice(out['shuffle_algo'], SHUFFLE_ALGOS, f'{where}.shuffle_algo')
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


# ------------------------------------------------------------------------------ mixer


@dataclass
class BatchPlan:
    batch: int
    weights: np.ndarray       # (S,) weights used for this batch
    global_index: np.ndarray  # (G,)
    stream: np.ndarray        # (G,)
    sample: np.ndarray        # (G,) sample id within its stream

    def shard(self, rank: int, world: int) -> BatchPlan:
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

    def has_state(self, batch: int) -> bool:
        """Whether the counts/targets before ``batch`` are still known (recent batches only)."""
        return batch in self._snap

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
