"""The planner against LLM Foundry's published MPT benchmark runs (docs/plan_published.csv).

    python bench/plan_published.py            # table + BENCH line
    python bench/plan_published.py --markdown # the table for docs/plan.md

Each row ran on the GPUs it names, so the planner must say it fits there (the goal: every row), and
its throughput prior should land near the measured MFU (reported, not a goal). Then a few configs
that cannot work (a 70B model on one 80 GB GPU, a 13B without sharding) must be flagged.
Pure Python: no torch, runs in a second.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from foundry_ext.plan import build  # noqa: E402
from foundry_ext.plan.memory import Cluster, GiB  # noqa: E402
from foundry_ext.throughput import hardware  # noqa: E402

CSV = ROOT / 'docs' / 'plan_published.csv'
# scripts/train/yamls/pretrain/mpt-<size>.yaml of LLM Foundry: d_model, n_heads, n_layers (expansion 4, vocab 50368)
MPT_SIZES = {'125m': (768, 12, 12), '350m': (1024, 16, 24), '760m': (1536, 12, 24), '1b': (2048, 16, 24),
             '3b': (2560, 20, 32), '7b': (4096, 32, 32), '13b': (5120, 40, 40), '30b': (7168, 56, 48),
             '70b': (8192, 64, 80)}


def mpt_config(size: str, seq: int, global_batch: int, mb: int, ac: bool, mixed: str = 'PURE',
               strategy: str | None = 'FULL_SHARD') -> dict[str, Any]:
    """An LLM Foundry MPT benchmark config (their yamls, as submit_benchmarks.py edits them)."""
    d, h, n = MPT_SIZES[size]
    cfg: dict[str, Any] = {
        'model': {'name': 'mpt_causal_lm', 'd_model': d, 'n_heads': h, 'n_layers': n, 'expansion_ratio': 4,
                  'max_seq_len': seq, 'vocab_size': 50368, 'init_device': 'meta', 'attn_config': {'attn_impl': 'flash'}},
        'max_seq_len': seq, 'global_train_batch_size': global_batch, 'device_train_microbatch_size': mb,
        'precision': 'amp_bf16', 'max_duration': '30ba',
        'optimizer': {'name': 'decoupled_adamw', 'lr': 1e-4, 'betas': [0.9, 0.95], 'weight_decay': 0.0},
        'train_loader': {'name': 'text', 'num_workers': 8, 'dataset': {}},
        'algorithms': {'gradient_clipping': {'clipping_type': 'norm', 'clipping_threshold': 1.0}},
    }
    if strategy:
        cfg['fsdp_config'] = {'sharding_strategy': strategy, 'mixed_precision': mixed, 'activation_checkpointing': ac,
                              'activation_checkpointing_reentrant': False, 'limit_all_gathers': True}
    return cfg


def cluster(gpu: str, gpus: int) -> Cluster:
    per_node = min(8, gpus)
    return Cluster(gpu, hardware.gpu_memory_bytes(gpu), per_node, gpus // per_node, hardware.gpu_peak_key(gpu))


def rows() -> list[dict[str, Any]]:
    lines = [ln for ln in CSV.read_text().splitlines() if ln and not ln.startswith('#')]
    out = []
    for r in csv.DictReader(lines):
        cfg = mpt_config(r['model'], int(r['seq']), int(r['global_batch']), int(r['mb']), r['ac'] == '1', r['mixed'])
        plan = build.make_plan(cfg, cluster(r['gpu'], int(r['gpus'])), with_fixes=False)
        tps = (plan.speed.tokens_per_s or 0) / int(r['gpus'])     # predicted tokens/s per GPU
        out.append({**r, 'plan': plan, 'mfu_pred': 100 * (plan.speed.mfu or 0), 'tps_pred': tps})
    return out


def _tps_err(r: dict[str, Any]) -> float:
    """Predicted vs published tokens/s per GPU, relative to the published."""
    measured = float(r['tokens_per_s_per_gpu'])
    return (r['tps_pred'] - measured) / measured


IMPOSSIBLE = [  # (what, config, cluster): the planner must say these do not fit
    ('70B, 1 x H100 80GB, no sharding', mpt_config('70b', 2048, 8, 1, True), cluster('h100-sxm', 1)),
    ('70B, 8 x H100 80GB, FULL_SHARD', mpt_config('70b', 2048, 64, 1, True), cluster('h100-sxm', 8)),
    ('13B, 8 x A100 80GB, DDP (no fsdp_config)', mpt_config('13b', 2048, 64, 1, False, strategy=None),
     cluster('a100-80gb', 8)),
    ('7B, 8 x A100 40GB, seq 2048, microbatch 16, no checkpointing', mpt_config('7b', 2048, 128, 16, False),
     cluster('a100-40gb', 8)),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--markdown', action='store_true')
    a = ap.parse_args()
    rs = rows()
    if a.markdown:
        print('| model | seq | GPUs | microbatch (largest predicted) | AC | predicted peak / GPU (GiB) | verdict '
              '| MFU published | MFU predicted | tokens/s/GPU published | predicted | error |')
        print('|---|---|---|---|---|---|---|---|---|---|---|---|')
    for r in rs:
        p = r['plan']
        verdict = 'fits' if p.memory.fits else 'DOES NOT FIT'
        peak = f'{p.memory.total / GiB:.1f} / {p.memory.capacity / GiB:.1f}'
        if a.markdown:
            print(f"| {r['model']} | {r['seq']} | {r['gpus']} x {r['gpu']} | {r['mb']} ({p.largest_microbatch}) "
                  f"| {'yes' if r['ac'] == '1' else 'no'} "
                  f"| {peak} | {verdict} | {float(r['mfu']):.1f} | {r['mfu_pred']:.1f} "
                  f"| {int(r['tokens_per_s_per_gpu']):,} | {r['tps_pred']:,.0f} | {100 * _tps_err(r):+.0f}% |")
        else:
            print(f"{r['model']:>5} seq {r['seq']:>6} {r['gpus']:>4} x {r['gpu']:<10} mb {r['mb']:>4} ac {r['ac']} "
                  f"peak {peak:>14} GiB {verdict:<13} MFU {float(r['mfu']):5.1f} pred {r['mfu_pred']:5.1f}  "
                  f"tok/s/GPU {int(r['tokens_per_s_per_gpu']):>7,} pred {r['tps_pred']:>7,.0f} {100 * _tps_err(r):+4.0f}%")
    fits = sum(r['plan'].memory.fits for r in rs)
    errs = [abs(r['mfu_pred'] - float(r['mfu'])) / float(r['mfu']) for r in rs]
    terrs = [abs(_tps_err(r)) for r in rs]
    flagged = 0
    print()
    for what, cfg, cl in IMPOSSIBLE:
        p = build.make_plan(cfg, cl, with_fixes=False)
        flagged += not p.memory.fits
        print(f"{'flagged' if not p.memory.fits else 'MISSED '}: {what}: {p.memory.total / GiB:.1f} GiB per GPU "
              f"of {p.memory.capacity / GiB:.1f}")
    print(f'{fits}/{len(rs)} published runs judged to fit; {flagged}/{len(IMPOSSIBLE)} impossible configs flagged; '
          f'MFU prior: median relative error {100 * statistics.median(errs):.0f}%, worst {100 * max(errs):.0f}%; '
          f'tokens/s per GPU (= time per token): median {100 * statistics.median(terrs):.0f}%, '
          f'within 15% for {sum(e <= 0.15 for e in terrs)}/{len(terrs)}, worst {100 * max(terrs):.0f}%')
    ok = fits == len(rs) and flagged == len(IMPOSSIBLE)
    print(f'BENCH plan_published fit_fraction={fits / len(rs):.3f} goal>=1.000 {"PASS" if ok else "MISS"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
