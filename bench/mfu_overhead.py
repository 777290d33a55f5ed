"""Overhead of the `mfu_monitor` callback as a fraction of training step time (CPU, same run).

    .venv/bin/python bench/mfu_overhead.py [--batches 60] [--d_model 128]

Trains a tiny MPT on random tokens with Composer, twice in one process: once with no callback
(the anchor) and once with `mfu_monitor` (log_interval 10, as in tiny-cpu.yaml) and
`loss_spike_guard`. The time spent inside each callback's event handlers is measured directly
(steady state: every event after FIT_START; the one-time peak probe at FIT_START is shown apart),
divided by the training wall-clock of that run. The wall-clock difference between the runs is
printed too, but on a shared CPU it is mostly noise. Ends with one line:

    BENCH mfu_callback overhead=<x> goal<=0.01 PASS|MISS
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('WANDB_MODE', 'offline')
warnings.filterwarnings('ignore')


def timed(cb, acc):
    orig = cb.run_event

    def run_event(event, state, logger):
        t0 = time.perf_counter()
        orig(event, state, logger)
        key = 'setup' if str(getattr(event, 'value', event)) in ('init', 'fit_start') else 'steady'
        acc[key] += time.perf_counter() - t0
    cb.run_event = run_event
    return cb


def train(callbacks, args):
    import torch
    from composer import Trainer
    from composer.optim import DecoupledAdamW
    from llmfoundry.models.mpt import ComposerMPTCausalLM
    torch.manual_seed(0)
    model = ComposerMPTCausalLM(d_model=args.d_model, n_heads=4, n_layers=args.n_layers, expansion_ratio=4,
                                max_seq_len=args.seq, vocab_size=args.vocab, no_bias=True,
                                attn_config={'attn_impl': 'torch', 'alibi': False, 'rope': True, 'rope_impl': 'hf'},
                                loss_fn='torch_crossentropy')
    ids = torch.randint(0, args.vocab, (args.batches * args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    data = [{'input_ids': x, 'labels': x.clone(), 'attention_mask': torch.ones_like(x)} for x in ids]
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, collate_fn=torch.utils.data.default_collate)
    trainer = Trainer(model=model, train_dataloader=loader, max_duration=f'{args.batches}ba',
                      optimizers=DecoupledAdamW(model.parameters(), lr=1e-3), callbacks=callbacks,
                      device='cpu', precision='fp32', progress_bar=False, log_to_console=False, loggers=[],
                      seed=0)
    t0 = time.perf_counter()
    trainer.fit()
    return trainer.state.timestamp.total_wct.total_seconds(), time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--batches', type=int, default=60)
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--seq', type=int, default=128)
    p.add_argument('--d_model', type=int, default=128)
    p.add_argument('--n_layers', type=int, default=4)
    p.add_argument('--vocab', type=int, default=4096)
    a = p.parse_args()
    from foundry_ext.stability.callback import LossSpikeGuard
    from foundry_ext.throughput.callback import MFUMonitor

    base_train, base_fit = train([], a)
    mfu_t, guard_t = defaultdict(float), defaultdict(float)
    mfu = timed(MFUMonitor(log_interval=10), mfu_t)
    guard = timed(LossSpikeGuard(actions=['skip']), guard_t)
    with_train, with_fit = train([mfu, guard], a)

    mfu_ratio = mfu_t['steady'] / with_train
    guard_ratio = guard_t['steady'] / with_train
    print(f'tiny MPT d_model={a.d_model} n_layers={a.n_layers}, {a.batches} batches of {a.batch}x{a.seq} tokens, CPU')
    print(f'{"run":<34}{"train wall s":>14}{"step ms":>10}')
    print(f'{"no callbacks (anchor)":<34}{base_train:>14.2f}{1e3 * base_train / a.batches:>10.1f}')
    print(f'{"mfu_monitor + loss_spike_guard":<34}{with_train:>14.2f}{1e3 * with_train / a.batches:>10.1f}')
    print(f'{"callback":<34}{"in-handler s":>14}{"ratio":>10}')
    print(f'{"mfu_monitor (steady state)":<34}{mfu_t["steady"]:>14.4f}{mfu_ratio:>10.5f}')
    print(f'{"mfu_monitor fit_start (probe)":<34}{mfu_t["setup"]:>14.4f}{"once":>10}')
    print(f'{"loss_spike_guard (steady state)":<34}{guard_t["steady"]:>14.4f}{guard_ratio:>10.5f}')
    print(f'wall-clock difference between the runs: {(with_train - base_train) / base_train:+.3f} (noise on a shared CPU)')
    print(f'MFU reported: {mfu.peak_source}, {mfu.fpt:.4g} FLOPs/token ({mfu.flops_source})')
    ok = mfu_ratio <= 0.01
    print(f'BENCH mfu_callback overhead={mfu_ratio:.5f} goal<=0.01 {"PASS" if ok else "MISS"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
