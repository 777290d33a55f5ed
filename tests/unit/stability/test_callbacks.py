"""The Composer adapters: mfu_monitor and loss_spike_guard (registry, bad inputs, arithmetic, runs)."""
import datetime
from types import SimpleNamespace

import pytest

from foundry_ext.errors import UserError

from conftest import ROOT

YAML = str(ROOT / 'yamls' / 'pretrain' / 'tiny-cpu.yaml')


def test_registered_and_on_in_tiny_cpu_yaml():
    from llmfoundry import registry

    from foundry_ext import config
    from foundry_ext.stability.callback import LossSpikeGuard, SpikeInjector
    from foundry_ext.throughput.callback import MFUMonitor
    assert registry.callbacks.get('mfu_monitor') is MFUMonitor
    assert registry.callbacks.get('loss_spike_guard') is LossSpikeGuard
    assert registry.callbacks.get('inject_spike') is SpikeInjector
    cfg = config.load(YAML)
    assert {'mfu_monitor', 'loss_spike_guard'} <= set(cfg['callbacks'])


def _validate_problem(tmp_path, *overrides):
    from foundry_ext import config
    cfg = config.load(YAML, list(overrides))
    problems = []
    from foundry_ext.config.validate import _check_callbacks
    _check_callbacks(cfg, problems)
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
    from foundry_ext.stability.callback import LossSpikeGuard
    from foundry_ext.throughput.callback import MFUMonitor
    with pytest.raises(UserError, match="unknown device name 'X100'"):
        MFUMonitor(device='X100')
    with pytest.raises(UserError, match='log_interval must be an integer >= 1'):
        MFUMonitor(log_interval=0)
    with pytest.raises(UserError, match='window must be an integer >= 1'):
        LossSpikeGuard(window=0)
    with pytest.raises(UserError, match="unknown key callbacks.loss_spike_guard.windw; did you mean 'window'"):
        LossSpikeGuard(windw=10)
    # rollback with no CheckpointSaver in the trainer: a clear line at fit start
    with pytest.raises(UserError, match="'rollback' needs checkpoints"):
        LossSpikeGuard().fit_start(SimpleNamespace(callbacks=[]), None)


def test_mfu_arithmetic_and_rank_sums(monkeypatch):
    """Composer's token counts are global (summed over ranks); per-device numbers divide by world."""
    from composer.core import Time

    from foundry_ext.throughput import callback as M
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
