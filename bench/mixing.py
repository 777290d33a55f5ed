"""Throughput of the `mixture` loader vs a plain mosaicml-streaming `StreamingDataset` with the
same streams and fixed proportions, in the same run (CPU, num_workers 0, batch 32).

    .venv/bin/python bench/mixing.py [--mds data/mds] [--batches 300] [--rounds 3]

Both loaders produce int64 ``input_ids`` batches of the same shape; the anchor gets the same
proportions through streaming's own ``Stream(proportion=...)``. Rounds alternate the two and
the median samples/s of each is compared. Ends with one ``BENCH mixing ...`` line.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
GOAL = 0.9


def _collate_plain(samples):
    import torch
    ids = torch.from_numpy(np.stack([s['tokens'] for s in samples]).astype(np.int64))
    return {'input_ids': ids, 'labels': ids.clone(), 'attention_mask': torch.ones_like(ids)}


def plain_loader(mds: Path, domains, props, batch, seed):
    from streaming import Stream, StreamingDataset
    from torch.utils.data import DataLoader
    streams = [Stream(local=str(mds / d), split='train', proportion=p) for d, p in zip(domains, props)]
    ds = StreamingDataset(streams=streams, shuffle=True, shuffle_seed=seed, batch_size=batch,
                          shuffle_algo='py1e', num_canonical_nodes=1, replication=None)
    return DataLoader(ds, batch_size=batch, num_workers=0, collate_fn=_collate_plain, drop_last=True)


def mixture_loader(mds: Path, domains, props, batch, seed):
    from torch.utils.data import DataLoader

    from foundry_ext.data.mixing.config import MixtureConfig
    from foundry_ext.data.mixing.loader import _identity, build_mixture
    from foundry_ext.validation import parse
    cfg = {'streams': {d: {'local': str(mds / d)} for d in domains}, 'split': 'train',
           'shuffle': {'preset': 'balanced', 'seed': seed},
           'schedule': {'unit': 'batches', 'points': [{'at': 0, 'weights': dict(zip(domains, props))}]}}
    ds = build_mixture(parse(MixtureConfig, cfg, 'train_loader'), batch, rank=0, world=1)
    return DataLoader(ds, batch_sampler=ds.sampler, collate_fn=_identity, num_workers=0)


def rate(make, n_batches: int) -> float:
    dl = make()
    it = iter(dl)
    next(it)  # warm-up: index loading, first shard open
    t = time.perf_counter()
    for _ in range(n_batches):
        b = next(it)
    dt = time.perf_counter() - t
    assert b['input_ids'].dtype.is_floating_point is False
    return n_batches * b['input_ids'].shape[0] / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--mds', default='data/mds')
    ap.add_argument('--batches', type=int, default=300)
    ap.add_argument('--batch', type=int, default=32)
    ap.add_argument('--rounds', type=int, default=3)
    a = ap.parse_args()
    mds = Path(a.mds)
    domains = sorted(p.name for p in mds.iterdir() if (p / 'train' / 'index.json').is_file()) if mds.is_dir() else []
    if not domains:
        print(f'error: no MDS domains under {mds}; run `make data` first', file=sys.stderr)
        return 2
    props = [round(1 / len(domains), 6)] * len(domains)
    props[-1] = round(1 - sum(props[:-1]), 6)
    os.environ.setdefault('TMPDIR', tempfile.gettempdir())
    from streaming.base.util import clean_stale_shared_memory
    clean_stale_shared_memory()
    ours, anchor = [], []
    for r in range(a.rounds):
        anchor.append(rate(lambda r=r: plain_loader(mds, domains, props, a.batch, 17 + r), a.batches))
        clean_stale_shared_memory()
        ours.append(rate(lambda r=r: mixture_loader(mds, domains, props, a.batch, 17 + r), a.batches))
        print(f'round {r}: StreamingDataset {anchor[-1]:9.0f} samples/s   mixture {ours[-1]:9.0f} samples/s')
    o, p = statistics.median(ours), statistics.median(anchor)
    print(f'{"loader":<28}{"samples/s (median)":>20}')
    print(f'{"StreamingDataset (anchor)":<28}{p:>20.0f}')
    print(f'{"mixture (ours)":<28}{o:>20.0f}')
    x = o / p
    print(f'BENCH mixing throughput_vs_streaming={x:.2f} goal>={GOAL} {"PASS" if x >= GOAL else "MISS"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
