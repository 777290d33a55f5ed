"""`mixture`: an LLM Foundry dataloader over several MDS streams with a curriculum schedule.

Registered in ``llmfoundry_dataloaders``; a yaml writes::

    train_loader:
      name: mixture
      split: train                      # default split for every stream (optional)
      streams:
        prose: {local: data/mds/prose}
        code:  {local: data/mds/code, remote: s3://bucket/code}
      shuffle: {preset: balanced, seed: 17}      # or shuffle_algo / shuffle_block_size / num_canonical_nodes
      schedule:
        unit: fraction                  # batches | tokens | fraction (of total)
        total: ${max_duration}
        interpolation: cosine           # step | linear | cosine
        points:
          - {at: 0.0, weights: {prose: 0.7, code: 0.3}}
          - {at: 1.0, weights: {prose: 0.3, code: 0.7}}
      adaptive: {eta: 1.0, floor: 0.05, update_every: 10, lag: 8}   # optional
      num_workers: 2

The global sequence is planned in the main process by :class:`foundry_ext.data.mixing.mixer.Mixer`
(a batch sampler, so DataLoader workers only read samples); samples are read with
mosaicml-streaming's own ``Stream`` index/shard readers (remote shards are fetched on first
use with ``Stream.prepare_shard``). Each batch carries ``input_ids``, ``labels``,
``attention_mask`` and, per sample, ``domain`` (stream index), ``sample_id`` (index within its
stream) and ``global_index``. The dataset has ``state_dict(num_samples, from_beginning)`` /
``load_state_dict``, the hooks Composer checkpoints use, so resumption is exact and needs no
spinning. The batch sampler is a ``DistributedSampler`` subclass only because Composer insists
on one when world size > 1; it does its own rank slicing. Composer and LLM Foundry are imported
only when the loader is built (config validation uses this module).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Optional

import numpy as np
from torch.utils.data.distributed import DistributedSampler

from foundry_ext.data.mixing import mixer as mixing
from foundry_ext.data.mixing.cache import ShardCache, shard_files, shard_lock, touch
from foundry_ext.data.mixing.config import MixtureConfig, StreamSpec, read_stream_index
from foundry_ext.errors import UserError

# ------------------------------------------------------------------------------ runtime


def _world() -> tuple[int, int]:
    try:
        import torch.distributed as td
        if td.is_available() and td.is_initialized():
            return td.get_rank(), td.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get('RANK', '0')), int(os.environ.get('WORLD_SIZE', '1'))


class StreamReader:
    """Random access to one MDS stream through streaming's ``Stream`` and shard readers."""

    def __init__(self, name: str, spec: StreamSpec, cache: Optional[ShardCache] = None):
        from streaming.base.stream import Stream
        from streaming.base.world import World
        self.name = name
        self.stream = Stream(remote=spec.remote, local=spec.local, split=spec.split)
        self.stream.apply_default({'remote': None, 'local': None, 'split': None, 'download_retry': 2,
                                   'download_timeout': 60, 'validate_hash': None, 'keep_zip': False})
        try:
            self.shards = self.stream.get_shards(World.detect(), allow_unsafe_types=False)
        except (ValueError, KeyError, RuntimeError, OSError) as e:
            msg = ' '.join(str(e).split())[:200]
            raise UserError(f'stream {name!r}: cannot read its MDS index ({msg})') from None
        self.sizes = [s.samples for s in self.shards]
        if sum(self.sizes) == 0:
            raise UserError(f'stream {name!r} is empty (0 samples); remove it or convert data into it')
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self._ready = [spec.remote is None] * len(self.shards)
        self.folder = os.path.join(self.stream.local, self.stream.split or '')
        self.cache = cache if spec.remote else None
        if self.cache is not None:
            self.cache.add(self.folder, self.shards)

        from streaming.base.format.mds.reader import MDSReader
        self._mds = [isinstance(sh, MDSReader) for sh in self.shards]
        self._fds: dict[int, int] = {}

    def __getitem__(self, idx: int) -> dict[str, Any]:
        k = int(np.searchsorted(self.offsets, idx, side='right')) - 1 if len(self.shards) > 1 else 0
        shard = self.shards[k]
        if not self._ready[k]:
            self._prepare(k)
        i = int(idx - self.offsets[k])
        if not self._mds[k]:
            return shard.get_item(i)
        # MDSReader.get_sample_data, with the shard file kept open (pread) instead of reopened per sample
        fd = self._fds.get(k)
        if fd is None:
            fd = self._open(k)
        begin, end = np.frombuffer(os.pread(fd, 8, (1 + i) * 4), np.uint32)
        return shard.decode_sample(os.pread(fd, int(end - begin), int(begin)))

    def _prepare(self, k: int) -> None:
        """Download shard ``k`` of a remote stream into the cache (once per machine: a file lock)."""
        shard = self.shards[k]
        raw = os.path.join(self.folder, shard.raw_data.basename)
        if not os.path.exists(raw):
            with shard_lock(self.folder, shard.raw_data.basename):
                if not os.path.exists(raw):
                    if self.cache is not None:
                        self.cache.make_room(sum(b for _, b in shard_files(shard)))
                    try:
                        self.stream.prepare_shard(shard)
                    except Exception as e:  # noqa: BLE001 - each store's client raises its own types
                        msg = ' '.join(str(e).split())[:200]
                        raise UserError(f'stream {self.name!r}: cannot fetch shard {shard.raw_data.basename} from '
                                        f'{self.stream.remote} ({type(e).__name__}: {msg})') from None
                    size = os.path.getsize(raw)
                    if size != shard.raw_data.bytes:
                        os.remove(raw)
                        raise UserError(f'stream {self.name!r}: shard {raw} arrived with {size} bytes, the index '
                                        f'says {shard.raw_data.bytes}; the remote copy is damaged')
        self._ready[k] = True

    def _open(self, k: int) -> int:
        """Open shard ``k`` for pread; drop descriptors of shards evicted since (their space returns)."""
        path = os.path.join(self.folder, self.shards[k].raw_data.basename)
        for j, fd in list(self._fds.items()):
            if os.fstat(fd).st_nlink == 0:
                os.close(fd)
                del self._fds[j]
                self._ready[j] = self.cache is None
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            if self.stream.remote is None and self.shards[k].zip_data is None:
                raise UserError(f'stream {self.name!r}: shard {path} is missing; restore it or re-convert') from None
            self._prepare(k)          # compressed only, or evicted by another worker in between: fetch it again
            fd = os.open(path, os.O_RDONLY)
        if self.cache is not None:
            touch(path)
        self._fds[k] = fd
        return fd

    def __getstate__(self):   # file descriptors are per process
        d = dict(self.__dict__)
        d['_fds'] = {}
        return d


def _identity(x):
    return x


class MixtureDataset:
    """Map-style dataset keyed by ``[stream, sample_id, global_index]``; holds the mixer."""

    def __init__(self, readers: list[StreamReader], mixer: mixing.Mixer, seq_len: int, column: str = 'tokens'):
        self.readers = readers
        self.mixer = mixer
        self.seq_len = seq_len
        self.column = column
        self.sampler: Optional[MixtureBatchSampler] = None

    def __len__(self) -> int:
        return int(self.mixer.sizes.sum())

    def __getitem__(self, key) -> dict[str, Any]:
        return self.__getitems__([key])

    def __getitems__(self, keys) -> dict[str, Any]:
        import torch
        n = len(keys)
        ids = np.empty((n, self.seq_len), dtype=np.int64)
        meta = np.asarray(keys, dtype=np.int64).reshape(n, 3)
        for j in range(n):
            ids[j] = self.readers[meta[j, 0]][int(meta[j, 1])][self.column][:self.seq_len]
        t = torch.from_numpy(ids)
        return {'input_ids': t, 'labels': t.clone(), 'attention_mask': torch.ones_like(t),
                'domain': torch.from_numpy(meta[:, 0].copy()), 'sample_id': torch.from_numpy(meta[:, 1].copy()),
                'global_index': torch.from_numpy(meta[:, 2].copy())}

    # Composer's dataset checkpoint hooks (State._dataset_state_dict / _load_dataset_state).
    def state_dict(self, num_samples: int, from_beginning: bool = True) -> dict[str, Any]:
        assert self.sampler is not None
        return self.sampler.state_dict(num_samples, from_beginning)

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        assert self.sampler is not None
        self.sampler.load_state_dict(obj)


class MixtureBatchSampler(DistributedSampler):
    """Yields this rank's slice of each global batch as dataset keys, in order.

    One "epoch" of the mixture is as many samples as all streams hold (so ``1ep`` durations
    work); epochs continue the same global sequence.
    """

    def __init__(self, mixer: mixing.Mixer, rank: int, world: int):   # noqa: no super().__init__: own sharding
        self.mixer, self.rank, self.world = mixer, rank, world
        self.num_replicas = world
        self.batches_per_epoch = max(1, int(mixer.sizes.sum()) // mixer.global_batch)
        self.epoch = 0              # epoch of the iterator most recently started
        self._next_epoch = 0
        self._resume: Optional[int] = None

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Composer calls this each epoch; the global sequence already continues across epochs."""

    def __iter__(self):
        if self._resume is not None:
            start, self._resume = self._resume, None
        else:
            start = self._next_epoch * self.batches_per_epoch
        self.epoch = start // self.batches_per_epoch
        self._next_epoch = self.epoch + 1
        if self.mixer.next_batch > start:
            self.mixer.rewind(start)
        while self.mixer.next_batch < start:   # an iterator was abandoned part-way: skip its rest
            self.mixer.next()
        for _ in range(start, self._next_epoch * self.batches_per_epoch):
            plan = self.mixer.next().shard(self.rank, self.world)
            yield np.stack([plan.stream, plan.sample, plan.global_index], axis=1).tolist()

    def state_dict(self, num_samples: int, from_beginning: bool = True) -> dict[str, Any]:
        """State to resume after ``num_samples`` (global) samples of the current epoch."""
        end = (self.epoch + 1) * self.batches_per_epoch
        if int(num_samples) == 0 and self.mixer.next_batch >= end:
            batch = end     # saved after the epoch ended, before the next iterator started
        else:
            batch = self.epoch * self.batches_per_epoch + int(num_samples) // self.mixer.global_batch
        return {'epoch': batch // self.batches_per_epoch, 'mixer': self.mixer.state_dict(batch)}

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        self.mixer.load_state_dict(obj['mixer'])
        self.epoch = self._next_epoch = int(obj['epoch'])
        self._resume = self.mixer.next_batch


def build_mixture(cfg: MixtureConfig, device_batch_size: int, rank: Optional[int] = None,
                  world: Optional[int] = None) -> MixtureDataset:
    """Readers + mixer + batch sampler for this rank (no DataLoader)."""
    r, w = _world()
    rank = r if rank is None else rank
    world = w if world is None else world
    cache = ShardCache(cfg.cache_bytes)
    readers = [StreamReader(n, s, cache) for n, s in cfg.stream_specs.items()]
    seq_len = None
    for rd in readers:
        first = rd[0]
        if 'tokens' not in first:
            raise UserError(f"stream {rd.name!r} has no 'tokens' column; convert it with "
                            'data_prep/convert_text_to_mds.py')
        n = len(first['tokens'])
        seq_len = seq_len or int(cfg.max_seq_len or n)
        if n < seq_len:
            raise UserError(f'stream {rd.name!r} has samples of {n} tokens, fewer than max_seq_len {seq_len}')
    mixer = mixing.Mixer(list(cfg.stream_specs), [rd.sizes for rd in readers], cfg.plan, cfg.shuffle_knobs,
                         global_batch=int(device_batch_size) * world, seq_len=int(seq_len or 0),
                         adaptive=cfg.adaptive_cfg)
    ds = MixtureDataset(readers, mixer, int(seq_len or 0))
    ds.sampler = MixtureBatchSampler(mixer, rank, world)
    return ds


def build_mixture_dataloader(tokenizer: Any, device_batch_size: Any, **loader: Any) -> Any:
    """LLM Foundry registry entry (``llmfoundry_dataloaders: mixture``) -> Composer DataSpec.

    ``loader``: the yaml mapping, parsed into :class:`MixtureConfig` (the same parse as validation)."""
    from composer.core.data_spec import DataSpec
    from torch.utils.data import DataLoader

    from foundry_ext.data.corpus_text import loader_kwargs
    from foundry_ext.validation import parse
    cfg = parse(MixtureConfig, {k: v for k, v in loader.items() if v is not None}, 'train_loader')
    if int(device_batch_size) != device_batch_size or device_batch_size <= 0:
        raise UserError(f'the mixture loader needs a whole device batch size, got {device_batch_size}')
    rank, _ = _world()
    if rank == 0:
        for n in cfg.notes:
            print(f'foundry_ext: {n}', file=sys.stderr)
    for name, spec in cfg.stream_specs.items():
        read_stream_index(name, spec)
    kw = loader_kwargs(cfg.num_workers, cfg.pin_memory, cfg.prefetch_factor, cfg.persistent_workers)
    adapt = cfg.adaptive_cfg
    if adapt is not None and kw['num_workers'] * (kw['prefetch_factor'] or 0) > adapt.lag:
        raise UserError(f"adaptive.lag ({adapt.lag}) must be >= num_workers x prefetch_factor "
                        f"({kw['num_workers']} x {kw['prefetch_factor']}): the loader plans that many batches "
                        'before their weights are known')
    ds = build_mixture(cfg, int(device_batch_size))
    dl = DataLoader(ds, batch_sampler=ds.sampler, collate_fn=_identity, timeout=cfg.timeout, **kw)
    from llmfoundry.data.utils import get_tokens_per_batch_func
    return DataSpec(dl, get_num_tokens_in_batch=get_tokens_per_batch_func())
