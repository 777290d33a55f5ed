"""The Composer adapters: mfu_monitor and loss_spike_guard (registry, bad inputs, arithmetic, runs)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_SEQ, TINY_VOCAB

YAML = str(ROOT / 'yamls' / 'pretrain' / 'tiny-cpu.yaml')


def _overrides(tok, mds, run_dir, **extra):
    from test_train_e2e import _overrides as e2e_overrides  # the tiny model/data settings of the e2e tests
    return e2e_overrides(tok, mds, run_dir, **{'callbacks.mfu_monitor.log_interval': 5,
                                               'callbacks.loss_spike_guard.warmup': 10, **extra})


def _rows(run):
    return [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines()]


def _last(rows, key):
    return [r[key] for r in rows if key in r][-1]


@pytest.mark.slow
def test_injected_spikes_are_caught_and_the_run_recovers(tiny_tokenizer, tiny_mds, tmp_path):
    """A poison batch at step 30 (skip) and a 300x LR step at 40 (its damage shows from step 41:
    the ladder skips, then rolls back to the step-40 checkpoint) - and training goes on."""
    run = tmp_path / 'run'
    r = subprocess.run([sys.executable, 'scripts/train.py', YAML,
                        *_overrides(tiny_tokenizer, tiny_mds, run, max_duration='70ba', eval_interval='70ba',
                                    save_interval='10ba', save_num_checkpoints_to_keep=3,
                                    **{'callbacks.loss_spike_guard.actions': '[skip,rollback]',
                                       'callbacks.loss_spike_guard.recover_steps': 5,
                                       'callbacks.inject_spike.poison_steps': '[30]',
                                       'callbacks.inject_spike.lr_steps': '[40]',
                                       'callbacks.inject_spike.lr_factor': 300})],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert 'spike at step 30 (loss' in out and 'action skip' in out
    assert 'rolled back at step' in out and 'to the checkpoint of step 40' in out
    rows = _rows(run)
    assert _last(rows, 'loss_spike/rollbacks') == 1
    assert _last(rows, 'loss_spike/recovered') >= 1
    losses = {r['step']: r['loss/train/total'] for r in rows if 'loss/train/total' in r}
    before = sorted(losses[s] for s in range(20, 30))[5]
    after = max(losses[s] for s in range(60, 70))
    assert after < 1.1 * before, (before, after)  # back on the pre-spike curve
    assert 0 < _last(rows, 'mfu/mfu') < 1.5


@pytest.mark.slow
def test_two_processes_clean_run_sums_and_never_triggers(tiny_tokenizer, tiny_mds, tmp_path):
    run = tmp_path / 'run2'
    # torchrun: the same RANK/WORLD_SIZE/MASTER_* as `composer -n 2` without importing composer in the launcher
    # (~17 s here); every rank's output reaches `out`. The composer launcher is under test in test_train_e2e.py.
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
    r = subprocess.run([*torchrun, 'scripts/train.py', YAML,
                        *_overrides(tiny_tokenizer, tiny_mds, run, max_duration='30ba', eval_interval='30ba',
                                    save_interval='30ba', global_train_batch_size=16, device_train_microbatch_size=8,
                                    **{'callbacks.mfu_monitor.peak_flops': 1e12})],
                       cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env={k: v for k, v in os.environ.items() if k != 'NODE_RANK'})   # plain torchrun: no NODE_RANK
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert 'loss_spike_guard: spike' not in out
    rows = _rows(run)
    assert _last(rows, 'loss_spike/spikes') == 0
    m = [row for row in rows if 'mfu/mfu' in row][-1]
    assert m['throughput/device/tokens_per_sec'] == pytest.approx(m['throughput/tokens_per_sec'] / 2)
    from foundry_ext.models import accounting as flops
    fpt = flops.flops_per_token({'d_model': 64, 'n_heads': 4, 'n_layers': 2, 'vocab_size': TINY_VOCAB,
                                 'expansion_ratio': 4, 'max_seq_len': TINY_SEQ})
    assert m['mfu/mfu'] == pytest.approx(m['throughput/device/tokens_per_sec'] * fpt / 1e12, rel=1e-6)
