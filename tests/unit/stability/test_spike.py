"""Loss-spike detection and the action ladder (foundry_ext.stability.spike) on synthetic series."""
import math
import random

import pytest

from foundry_ext.errors import UserError
from foundry_ext.stability.spike import SpikeConfig, SpikeGuard, run_series


def noisy_curve(seed, n=3000, noise=0.02, floor=2.0):
    """A decreasing pretraining-like loss curve with multiplicative batch noise, and grad norms."""
    rng = random.Random(seed)
    losses = [(floor + 8.0 * math.exp(-t / 300)) * (1 + rng.gauss(0, noise)) for t in range(n)]
    grads = [(0.5 + 2.0 * math.exp(-t / 200)) * math.exp(rng.gauss(0, 0.15)) for t in range(n)]
    return losses, grads


@pytest.mark.parametrize('seed', range(8))
def test_noisy_decreasing_curves_never_trigger(seed):
    losses, grads = noisy_curve(seed, noise=0.01 + 0.005 * seed)
    decisions = run_series(SpikeGuard(), losses, grads)
    assert [d.step for d in decisions if d.spike] == []


@pytest.mark.parametrize('factor', [1.5, 2.0, 5.0, 50.0])
def test_spikes_caught_at_their_step(factor):
    """Stated delay: 0 steps. A loss >= (1 + min_rise) x median and >= 6 robust sigma above it is
    flagged on the very step it appears, and that step is skipped."""
    losses, grads = noisy_curve(1)
    at = [500, 1200, 2500]
    for s in at:
        losses[s] *= factor
    decisions = run_series(SpikeGuard(), losses, grads)
    assert [d.step for d in decisions if d.spike] == at
    assert all(decisions[s].skip_step for s in at)


def test_divergence_and_nonfinite_and_grad_norm():
    losses, grads = noisy_curve(2, n=800)
    ramp = losses[:400] + [losses[400] * (1 + 0.05 * i) for i in range(1, 100)]
    d = run_series(SpikeGuard(), ramp)
    first = next(x.step for x in d if x.spike)
    assert 400 < first <= 406  # a 5%/step divergence: caught once 10% above the median (<= 6 steps)
    g = SpikeGuard()
    assert g.observe(0, float('nan')).spike  # before any warm-up
    assert g.observe(1, 1.0, float('inf')).reason == 'nonfinite'
    losses, grads = noisy_curve(3, n=600)
    grads[300] *= 10
    d = run_series(SpikeGuard(), losses, grads)
    assert [(x.step, x.reason) for x in d if x.spike] == [(300, 'grad_norm')]


def test_ladder_escalates_recovers_and_stops():
    cfg = SpikeConfig(window=50, warmup=10, actions=('skip', 'cooldown', 'rollback'), recover_steps=5,
                      cooldown_steps=3, cooldown_factor=0.25, stop_after=4)
    g = SpikeGuard(cfg)
    for i in range(30):
        g.observe(i, 3.0 + 0.01 * (i % 3))
    a = g.observe(30, 30.0)
    assert (a.action, a.incident_spikes) == ('skip', 1)
    b = g.observe(31, 30.0)
    assert b.action == 'cooldown' and g.lr_scale(32) == 0.25 and g.lr_scale(35) == 1.0
    c = g.observe(32, 30.0)
    assert c.action == 'rollback' and c.rollback_to == 30
    d = g.observe(33, float('nan'))
    assert d.action == 'stop' and 'stopping at step 33: 4 spikes since step 30' in g.stop_message(d)
    # a clean stretch closes the incident: the next spike starts at the bottom of the ladder again
    g2 = SpikeGuard(cfg)
    for i in range(30):
        g2.observe(i, 3.0)
    g2.observe(30, 30.0)
    rec = [g2.observe(31 + i, 3.0) for i in range(5)]
    assert rec[-1].recovered and g2.n.recovered == 1
    assert g2.observe(40, 30.0).action == 'skip'


def test_state_dict_round_trip_resumes_identically():
    losses, grads = noisy_curve(5, n=400)
    losses[150] *= 3
    losses[300] = float('inf')
    full = run_series(SpikeGuard(), losses, grads)
    g = SpikeGuard()
    first = [g.observe(i, losses[i], grads[i]) for i in range(200)]
    sd = g.state_dict()
    import json
    sd = json.loads(json.dumps(sd))  # survives a checkpoint as plain data
    g2 = SpikeGuard()
    g2.load_state_dict(sd)
    rest = [g2.observe(i, losses[i], grads[i]) for i in range(200, 400)]
    assert [x.spike for x in first + rest] == [x.spike for x in full]
    assert g2.metrics() == run_and_metrics(losses, grads)


def run_and_metrics(losses, grads):
    g = SpikeGuard()
    run_series(g, losses, grads)
    return g.metrics()


@pytest.mark.parametrize('kwargs, msg', [
    ({'window': 0}, 'window must be an integer >= 1, got 0'),
    ({'window': -5}, 'window must be an integer >= 1'),
    ({'threshold': 1}, 'threshold must be a number > 1'),
    ({'threshold': 0.5}, 'threshold must be a number > 1'),
    ({'grad_threshold': 1.0}, 'grad_threshold must be a number > 1'),
    ({'cooldown_factor': 0}, 'cooldown_factor must be in'),
    ({'actions': ['skip', 'rolback']}, "unknown action 'rolback'.*did you mean 'rollback'"),
])
def test_bad_config_one_line(kwargs, msg):
    with pytest.raises(UserError, match=msg) as e:
        SpikeConfig(**kwargs)
    assert '\n' not in str(e.value)
