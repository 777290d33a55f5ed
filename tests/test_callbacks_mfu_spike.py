"""The Composer adapters: mfu_monitor and loss_spike_guard (registry, bad inputs, arithmetic, runs)."""
import datetime
import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT, TINY_SEQ, TINY_VOCAB
from foundry_ext.errors import UserError

YAML = str(ROOT / 'yamls' / 'pretrain' / 'tiny-cpu.yaml')


def test_registered_and_on_in_tiny_cpu_yaml():
    from llmfoundry import registry

    from foundry_ext import config
    from foundry_ext.callbacks.loss_spike import LossSpikeGuard, SpikeInjector
    from foundry_ext.callbacks.mfu import MFUMonitor
    assert registry.callbacks.get('mfu_monitor') is MFUMonitor
    assert registry.callbacks.get('loss_spike_guard') is LossSpikeGuard
    assert registry.callbacks.get('inject_spike') is SpikeInjector
    cfg = config.load(YAML)
    assert {'mfu_monitor', 'loss_spike_guard'} <= set(cfg['callbacks'])


def _validate_problem(tmp_path, *overrides):
    from foundry_ext import config
    cfg = config.load(YAML, list(overrides))
    problems = []
    config._check_callbacks(cfg, problems)
    return problems


@pytest.mark.parametrize('override, msg', [
    ('callbacks.loss_spike_guard.window=0', 'window must be an integer >= 1, got 0'),
    ('callbacks.loss_spike_guard.window=-3', 'window must be an integer >= 1, got -3'),
    ('callbacks.loss_spike_guard.threshold=1', 'threshold must be a number > 1'),
    ('callbacks.loss_spike_guard.treshold=3', "unknown key callbacks.loss_spike_guard.treshold; did you mean 'threshold'"),
    ('callbacks.mfu_monitor.device=X100', "callbacks.mfu_monitor: unknown device name 'X100'"),
    ('callbacks.mfu_monitor.peak_flops=0', 'peak_flops must be a number > 0'),
])
def test_bad_callback_options_one_line(tmp_path, override, msg):
    problems = _validate_problem(tmp_path, override)
    assert len(problems) == 1 and msg in problems[0] and '\n' not in problems[0], problems


def test_rollback_without_save_folder(tmp_path):
    problems = _validate_problem(tmp_path, 'save_folder=null')
    assert problems == ["callbacks.loss_spike_guard: action 'rollback' needs a checkpoint folder; set save_folder "
                        "(and save_interval, e.g. 50ba) or drop 'rollback' from actions"]
    assert _validate_problem(tmp_path, 'save_folder=null', 'callbacks.loss_spike_guard.actions=[skip]') == []


def test_callbacks_reject_bad_arguments_directly():
    from foundry_ext.callbacks.loss_spike import LossSpikeGuard
    from foundry_ext.callbacks.mfu import MFUMonitor
    with pytest.raises(UserError, match="unknown device name 'X100'"):
        MFUMonitor(device='X100')
    with pytest.raises(UserError, match='log_interval must be an integer >= 1'):
        MFUMonitor(log_interval=0)
    with pytest.raises(UserError, match='window must be an integer >= 1'):
        LossSpikeGuard(window=0)
    with pytest.raises(UserError, match="unknown option 'windw'; did you mean 'window'"):
        LossSpikeGuard(windw=10)
    # rollback with no CheckpointSaver in the trainer: a clear line at fit start
    with pytest.raises(UserError, match="'rollback' needs checkpoints"):
        LossSpikeGuard().fit_start(SimpleNamespace(callbacks=[]), None)


def test_mfu_arithmetic_and_rank_sums(monkeypatch):
    """Composer's token counts are global (summed over ranks); per-device numbers divide by world."""
    from composer.core import Time

    from foundry_ext.callbacks import mfu as M
    cb = M.MFUMonitor(peak_flops=1e12, usd_per_gpu_hour=2.0)
    cb.peak, cb.fpt, cb.fpt_causal, cb.hfu_factor = 1e12, 1e6, 0.9e6, 4 / 3
    state = SimpleNamespace(get_elapsed_duration=lambda: Time(0.25, 'dur'),
                            timestamp=SimpleNamespace(total_wct=datetime.timedelta(seconds=100)))
    monkeypatch.setattr(M.dist, 'get_world_size', lambda: 2)
    m = cb.compute(d_tokens=400_000, d_seconds=2.0, state=state)
    assert m['throughput/tokens_per_sec'] == 200_000
    assert m['throughput/device/tokens_per_sec'] == 100_000
    assert m['mfu/model_tflops_per_device'] == pytest.approx(0.1)
    assert m['mfu/mfu'] == pytest.approx(0.1) and m['mfu/mfu_causal'] == pytest.approx(0.09)
    assert m['mfu/hfu'] == pytest.approx(0.1 * 4 / 3)
    assert m['mfu/eta_s'] == pytest.approx(300)
    assert m['mfu/projected_device_hours'] == pytest.approx(400 * 2 / 3600)
    assert m['mfu/projected_cost_usd'] == pytest.approx(400 * 2 / 3600 * 2.0)


# ------------------------------------------------------------------------------ end-to-end runs

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
@pytest.mark.skipif(shutil.which('composer', path=os.path.dirname(sys.executable)) is None,
                    reason='composer launcher not installed')
def test_two_processes_clean_run_sums_and_never_triggers(tiny_tokenizer, tiny_mds, tmp_path):
    run = tmp_path / 'run2'
    composer = os.path.join(os.path.dirname(sys.executable), 'composer')
    r = subprocess.run([composer, '-n', '2', 'scripts/train.py', YAML,
                        *_overrides(tiny_tokenizer, tiny_mds, run, max_duration='30ba', eval_interval='30ba',
                                    save_interval='30ba', global_train_batch_size=16, device_train_microbatch_size=8,
                                    **{'callbacks.mfu_monitor.peak_flops': 1e12})],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert 'loss_spike_guard: spike' not in out
    rows = _rows(run)
    assert _last(rows, 'loss_spike/spikes') == 0
    m = [row for row in rows if 'mfu/mfu' in row][-1]
    assert m['throughput/device/tokens_per_sec'] == pytest.approx(m['throughput/tokens_per_sec'] / 2)
    from foundry_ext import flops
    fpt = flops.flops_per_token({'d_model': 64, 'n_heads': 4, 'n_layers': 2, 'vocab_size': TINY_VOCAB,
                                 'expansion_ratio': 4, 'max_seq_len': TINY_SEQ})
    assert m['mfu/mfu'] == pytest.approx(m['throughput/device/tokens_per_sec'] * fpt / 1e12, rel=1e-6)
