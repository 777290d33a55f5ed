"""The curriculum mixer's pure core: schedules, assignment, per-stream order, sharding, exact
resumption (plain and adaptive), and every bad input the issue lists. No Composer here."""
import json
import random

import numpy as np
import pytest

from foundry_ext.data.mixing import adaptive, schedule
from foundry_ext.data.mixing import mixer as mixing
from foundry_ext.data.mixing.config import MixtureConfig, read_stream_index
from foundry_ext.data.mixing.loader import MixtureBatchSampler
from foundry_ext.errors import UserError
from foundry_ext.validation import parse


def parse_config(loader):
    return parse(MixtureConfig, loader, 'train_loader')

STREAMS = ['prose', 'code', 'math']
SHARDS = [[50, 37], [64], [13, 9, 20]]      # small streams: epochs roll over in the tests
ANNEAL = {'unit': 'fraction', 'total': '40ba', 'interpolation': 'cosine', 'points': [
    {'at': 0.0, 'weights': {'prose': 0.6, 'code': 0.3, 'math': 0.1}},
    {'at': 0.5, 'weights': {'prose': 0.6, 'code': 0.3, 'math': 0.1}},
    {'at': 1.0, 'weights': {'prose': 0.2, 'code': 0.3, 'math': 0.5}}]}


def sched(cfg=ANNEAL, streams=STREAMS):
    s, _ = schedule.parse_schedule(cfg, streams)
    return s


def mixer(G=8, adaptive=None, preset='balanced', seed=17, cfg=ANNEAL):
    return mixing.Mixer(STREAMS, SHARDS, sched(cfg), mixing.parse_shuffle({'preset': preset, 'seed': seed}),
                        global_batch=G, seq_len=16, adaptive=adaptive)


def plans(m, n):
    return [m.next() for _ in range(n)]


def flat(ps):
    return [(int(s), int(i)) for p in ps for s, i in zip(p.stream, p.sample)]


# ------------------------------------------------------------------------------ schedule


def test_schedule_interpolations():
    lin = sched({**ANNEAL, 'interpolation': 'linear'})
    cos = sched(ANNEAL)
    step = sched({**ANNEAL, 'interpolation': 'step'})
    for s in (lin, cos, step):
        assert np.allclose(s.weights_at(0.0), [0.6, 0.3, 0.1]) and np.allclose(s.weights_at(0.3), [0.6, 0.3, 0.1])
        assert np.allclose(s.weights_at(1.0), [0.2, 0.3, 0.5]) and np.allclose(s.weights_at(7.0), [0.2, 0.3, 0.5])
    assert np.allclose(lin.weights_at(0.75), [0.4, 0.3, 0.3])
    assert np.allclose(cos.weights_at(0.75), [0.4, 0.3, 0.3])   # cosine midpoint = linear midpoint
    assert cos.weights_at(0.6)[2] < lin.weights_at(0.6)[2]      # cosine starts slower
    assert np.allclose(step.weights_at(0.99), [0.6, 0.3, 0.1])
    for x in np.linspace(0, 1, 50):
        assert abs(cos.weights_at(x).sum() - 1) < 1e-12
    # fraction of total: batch 30 of 40 is progress 0.75; tokens and batches units
    assert cos.progress(30, 8, 16) == 0.75
    tok = sched({'unit': 'tokens', 'interpolation': 'linear', 'points': [
        {'at': 0, 'weights': {'code': 1}}, {'at': 1280, 'weights': {'math': 1}}]})
    assert np.allclose(tok.weights_for_batch(5, 8, 16), [0, 0.5, 0.5])
    ba = sched({'unit': 'batches', 'interpolation': 'step', 'points': [
        {'at': 0, 'weights': {'code': 1}}, {'at': 10, 'weights': {'math': 1}}]})
    assert np.allclose(ba.weights_for_batch(9, 8, 16), [0, 1, 0]) and np.allclose(ba.weights_for_batch(10, 8, 16), [0, 0, 1])
    total_tok = sched({**ANNEAL, 'total': '5120tok'})          # 5120 / (8*16) = 40 batches
    assert total_tok.progress(30, 8, 16) == 0.75


def test_weights_not_summing_to_one_are_normalized_and_said_once():
    s, notes = schedule.parse_schedule({'unit': 'batches', 'points': [
        {'at': 0, 'weights': {'prose': 3, 'code': 1}}, {'at': 5, 'weights': {'prose': 2, 'code': 2}}]}, STREAMS)
    assert np.allclose(s.weights[0], [0.75, 0.25, 0]) and len(notes) == 1 and 'normalized' in notes[0]
    _, notes = schedule.parse_schedule(ANNEAL, STREAMS)
    assert notes == []


BAD_SCHEDULES = [
    ({'points': [{'at': 0, 'weights': {'poetry': 1}}], 'unit': 'batches'}, "unknown stream 'poetry'"),
    ({'points': [{'at': 0, 'weights': {'prose': 1, 'cod': 1}}], 'unit': 'batches'}, "did you mean 'code'"),
    ({'points': [{'at': 0, 'weights': {'prose': -0.1, 'code': 1}}], 'unit': 'batches'}, 'negative'),
    ({'points': [{'at': 0, 'weights': {'prose': 0, 'code': 0}}], 'unit': 'batches'}, 'all zero'),
    ({'points': [{'at': 0.5, 'weights': {'code': 1}}, {'at': 0.5, 'weights': {'prose': 1}}], 'total': 10},
     'does not increase'),
    ({'points': [{'at': 0.8, 'weights': {'code': 1}}, {'at': 0.2, 'weights': {'prose': 1}}], 'total': 10},
     'does not increase'),
    ({'points': [{'at': 1.5, 'weights': {'code': 1}}], 'total': 10}, r'outside \[0, 1\]'),
    ({'points': [{'at': -1, 'weights': {'code': 1}}], 'unit': 'tokens'}, 'negative'),
    ({'points': [{'at': 50, 'weights': {'code': 1}}], 'unit': 'batches', 'total': '20ba'}, 'past'),
    ({'points': [{'at': 0, 'weights': {'code': 1}}]}, 'total is required'),
    ({'points': [], 'unit': 'batches'}, 'non-empty list'),
    ({'points': [{'at': 0, 'weights': {'code': 1}}], 'unit': 'epochs'}, 'unit must be one of'),
    ({'points': [{'at': 0, 'weights': {'code': 1}}], 'unit': 'batches', 'interpolation': 'cubic'},
     'interpolation must be one of'),
    ({'points': [{'at': 0, 'weights': {'code': 1}}], 'unit': 'batches', 'unti': 1}, "did you mean 'unit'"),
    ({'points': [{'at': 0, 'weights': {'code': 1}}], 'total': 'soon'}, 'positive duration'),
]


@pytest.mark.parametrize('cfg,msg', BAD_SCHEDULES)
def test_bad_schedules_one_line_each(cfg, msg):
    with pytest.raises(UserError, match=msg) as e:
        schedule.parse_schedule(cfg, STREAMS)
    assert '\n' not in str(e.value)


@pytest.mark.parametrize('cfg,msg', [
    ({'preset': 'best'}, 'preset must be one of'), ({'shuffle_algo': 'py9'}, 'shuffle_algo'),
    ({'seed': -1}, 'seed'), ({'shuffle_block_size': 0}, 'shuffle_block_size'), ({'sead': 1}, "did you mean 'seed'")])
def test_bad_shuffle(cfg, msg):
    with pytest.raises(UserError, match=msg):
        mixing.parse_shuffle(cfg)


@pytest.mark.parametrize('cfg,msg', [
    ({'floor': 0.5}, 'floor'), ({'eta': 0}, 'eta'), ({'ema': 1.0}, 'ema'), ({'lag': -1}, 'lag'),
    ({'update_every': 0}, 'update_every'), ({'reference': {'poetry': 1.0}}, 'unknown stream'), ({'et': 1}, 'did you mean')])
def test_bad_adaptive(cfg, msg):
    with pytest.raises(UserError, match=msg):
        adaptive.parse_adaptive(cfg, STREAMS)


# ------------------------------------------------------------------------------ assignment and order


def test_assignment_is_a_pure_function_of_seed_index_and_weights():
    idx = np.arange(200_000)
    w = np.array([0.5, 0.3, 0.2])
    a = mixing.assign_streams(17, idx, w)
    assert np.array_equal(a[123_000:123_100], mixing.assign_streams(17, idx[123_000:123_100], w))
    assert not np.array_equal(a[:1000], mixing.assign_streams(18, idx[:1000], w))
    assert np.allclose(np.bincount(a) / len(a), w, atol=0.005)
    assert (mixing.assign_streams(17, idx[:5000], np.array([0.5, 0.0, 0.5])) != 1).all()   # zero weight: never
    rows = np.tile(w, (1000, 1))
    assert np.array_equal(mixing.assign_streams(17, idx[:1000], rows), a[:1000])


@pytest.mark.parametrize('preset', ['quality', 'balanced', 'fast'])
def test_stream_order_no_repeats_within_an_epoch(preset):
    sh = mixing.parse_shuffle({'preset': preset, 'seed': 3})
    o = mixing.StreamOrder([30, 17, 25], 3, 1, sh)
    seq = o.take(0, 72 * 3)
    epochs = [seq[i * 72:(i + 1) * 72] for i in range(3)]
    for e in epochs:
        assert sorted(e) == list(range(72))
    assert not np.array_equal(epochs[0], epochs[1])
    assert np.array_equal(o.take(50, 40), seq[50:90])                        # any window, same ids
    assert not np.array_equal(mixing.StreamOrder([30, 17, 25], 3, 2, sh).take(0, 72), epochs[0])  # per stream
    assert np.array_equal(mixing.StreamOrder([30, 17, 25], 3, 1, mixing.parse_shuffle(False)).take(0, 72),
                          np.arange(72))


def test_mixer_follows_the_schedule_and_rolls_epochs():
    m = mixer(G=64, cfg={**ANNEAL, 'total': '400ba'})
    ps = plans(m, 400)
    first = np.concatenate([p.stream for p in ps[:150]])
    last = np.concatenate([p.stream for p in ps[-40:]])
    assert np.allclose(np.bincount(first, minlength=3) / len(first), [0.6, 0.3, 0.1], atol=0.02)
    assert np.allclose(np.bincount(last, minlength=3) / len(last), [0.2, 0.3, 0.5], atol=0.03)
    # within a stream: each epoch is a permutation of the stream (no repeats until exhausted)
    for k, n in enumerate(m.sizes):
        ids = np.concatenate([p.sample[p.stream == k] for p in ps])
        for e in range(len(ids) // n):
            assert sorted(ids[e * n:(e + 1) * n]) == list(range(n))
    assert (m.epochs() == m.counts // m.sizes).all() and m.epochs().min() >= 10
    assert np.allclose(m.target, m.counts, rtol=0.05)            # realized tracks target


# ------------------------------------------------------------------------------ ranks, workers, resumption


def _run_sampler(G, world, n_batches, resume_at=None, prefetch=0, adaptive=None, feed=None):
    """Global sequence seen by `world` ranks; optionally checkpoint at batch `resume_at` (with the
    sampler `prefetch` batches ahead, as DataLoader workers are) and resume into fresh mixers."""
    rng = random.Random(resume_at)
    ms = [mixer(G, adaptive) for _ in range(world)]
    ss = [MixtureBatchSampler(m, r, world) for r, m in enumerate(ms)]
    its = [iter(s) for s in ss]
    out, step, pending = [], 0, [[] for _ in range(world)]

    def pull(r):   # like a DataLoader: prefetch within an epoch; a new iterator per epoch
        while len(pending[r]) <= prefetch and its[r] is not None:
            try:
                pending[r].append(next(its[r]))
            except StopIteration:
                its[r] = None
        if not pending[r]:
            its[r] = iter(ss[r])
            return pull(r)
        return pending[r].pop(0)

    while step < n_batches:
        batch = [pull(r) for r in range(world)]
        out.append([tuple(k) for b in batch for k in b])
        if feed:
            for m in ms:
                feed(m, step, out[-1])
        step += 1
        if step == resume_at:
            in_epoch = step - ss[0].epoch * ss[0].batches_per_epoch
            if in_epoch == ss[0].batches_per_epoch and rng.random() < 0.5:
                in_epoch = 0   # Composer also checkpoints after the epoch rolled over: 0 samples in epoch
            sd = [json.loads(json.dumps(s.state_dict(in_epoch * G, True))) for s in ss]   # as a checkpoint would
            ms = [mixer(G, adaptive) for _ in range(world)]
            ss = [MixtureBatchSampler(m, r, world) for r, m in enumerate(ms)]
            for s, d in zip(ss, sd):
                s.load_state_dict(d)
            its = [iter(s) for s in ss]
            pending = [[] for _ in range(world)]
    return out


def test_any_world_size_and_prefetch_give_the_same_global_sequence():
    ref = _run_sampler(8, 1, 30)
    for world, prefetch in [(2, 0), (4, 3), (8, 1), (1, 4)]:
        assert _run_sampler(8, world, 30, prefetch=prefetch) == ref


def test_exact_resumption_at_random_steps():
    rng = random.Random(5)
    ref = _run_sampler(8, 1, 60)
    for k in [24, 48] + [rng.randrange(1, 60) for _ in range(6)]:   # 24 batches = one mixture epoch
        world, prefetch = rng.choice([(1, 0), (2, 0), (1, 4), (2, 4)])
        assert _run_sampler(8, world, 60, resume_at=k, prefetch=prefetch) == ref, (k, world, prefetch)


def _fake_losses(m, step, keys):
    """Per-stream loss as a deterministic function of the batch: stream 0 hardest."""
    sums, cnts = np.zeros(3), np.zeros(3)
    for s, i, _g in keys:
        sums[s] += 3.0 - s + 0.01 * (i % 7)
        cnts[s] += 1
    m.adaptive.observe(step, sums, cnts)


def test_adaptive_moves_weights_keeps_floors_and_resumes_exactly():
    ad = adaptive.AdaptiveConfig(eta=0.5, ema=0.5, floor=0.05, update_every=2, lag=4)
    ref = _run_sampler(8, 1, 60, prefetch=4, adaptive=ad, feed=_fake_losses)
    # the hardest stream (0) gains weight; none drops under the floor
    m = mixer(8, ad)
    for step in range(60):
        p = m.next()
        _fake_losses(m, step, zip(p.stream, p.sample, p.global_index))
    w = m.weights(60)
    assert w[0] > 0.85 and w.min() >= 0.05 - 1e-12 and abs(w.sum() - 1) < 1e-12
    rng = random.Random(11)
    for k in rng.sample(range(1, 60), 5):
        for prefetch in (0, 4):
            assert _run_sampler(8, 1, 60, resume_at=k, prefetch=prefetch, adaptive=ad, feed=_fake_losses) == ref
    # a loader further ahead than lag (or no loss feedback at all) is a clear error, not silent drift
    with pytest.raises(adaptive.AdaptiveNotReady, match='adaptive.lag'):
        _run_sampler(8, 1, 20, prefetch=6, adaptive=ad, feed=_fake_losses)
    with pytest.raises(UserError, match='mix_logger'):
        _run_sampler(8, 1, 20, adaptive=ad)


def test_state_dict_checks_compatibility():
    m = mixer(8)
    plans(m, 3)
    sd = m.state_dict()
    with pytest.raises(UserError, match='global batch'):
        mixer(16).load_state_dict(sd)
    with pytest.raises(UserError, match='seed'):
        mixer(8, seed=1).load_state_dict(sd)
    with pytest.raises(UserError, match='adaptive'):
        mixer(8, adaptive.AdaptiveConfig()).load_state_dict(sd)


# ------------------------------------------------------------------------------ streams (files)


def _loader(streams, **kw):
    return {'name': 'mixture', 'streams': streams, 'split': 'train',
            'schedule': {'unit': 'batches', 'points': [{'at': 0, 'weights': {n: 1 for n in streams}}]}, **kw}


def test_bad_streams_one_line_each(tiny_mds, tmp_path):
    (tmp_path / 'plain' / 'train').mkdir(parents=True)
    (tmp_path / 'plain' / 'train' / 'notes.txt').write_text('hello')
    (tmp_path / 'broken' / 'train').mkdir(parents=True)
    (tmp_path / 'broken' / 'train' / 'index.json').write_text('{"shards": 3}')
    (tmp_path / 'empty' / 'train').mkdir(parents=True)
    (tmp_path / 'empty' / 'train' / 'index.json').write_text(json.dumps({'version': 2, 'shards': []}))
    cases = [('plain', 'is not an MDS dataset'), ('broken', 'not a valid MDS index'), ('empty', 'is empty'),
             ('nowhere', 'does not exist')]
    for name, msg in cases:
        streams = parse_config(_loader({'code': str(tiny_mds / 'code'), name: str(tmp_path / name)})).stream_specs
        with pytest.raises(UserError, match=msg) as e:
            for n, spec in streams.items():
                read_stream_index(n, spec)
        assert '\n' not in str(e.value)
    with pytest.raises(UserError, match='non-empty mapping'):
        parse_config(_loader({}))
    with pytest.raises(UserError, match="did you mean 'schedule'"):
        parse_config({**_loader({'code': str(tiny_mds / 'code')}), 'schedul': {}})


def test_config_validate_reports_mixture_problems(tiny_mds, tiny_tokenizer):
    from foundry_ext.config.validate import validate
    cfg = {'model': {'name': 'mpt_causal_lm'}, 'tokenizer': {'name': str(tiny_tokenizer)},
           'optimizer': {'name': 'decoupled_adamw'}, 'scheduler': {'name': 'constant_with_warmup', 't_warmup': '0ba'},
           'max_duration': '10ba', 'max_seq_len': 64, 'global_train_batch_size': 8,
           'train_loader': _loader({'code': str(tiny_mds / 'code')})}
    validate(cfg)
    cfg['train_loader']['schedule']['points'][0]['weights'] = {'math': 1}
    with pytest.raises(UserError, match="unknown stream 'math'"):
        validate(cfg)


def test_reader_and_batches(tiny_mds):
    from foundry_ext.data.mixing.loader import build_mixture
    cfg = parse_config(_loader({d: str(tiny_mds / d) for d in ('code', 'records')}))
    ds = build_mixture(cfg, device_batch_size=4, rank=0, world=1)
    keys = next(iter(ds.sampler))
    b = ds.__getitems__(keys)
    assert b['input_ids'].shape == (4, 64) and b['domain'].tolist() == [k[0] for k in keys]
    stats = json.loads((tiny_mds / 'stats.json').read_text())['domains']
    assert ds.mixer.sizes.tolist() == [stats['code']['train']['samples'], stats['records']['train']['samples']]


def test_train_command_rejects_bad_mix_in_one_line(tiny_mds, tiny_tokenizer):
    import subprocess
    import sys

    from conftest import ROOT
    base = [sys.executable, 'scripts/train.py', 'yamls/pretrain/tiny-mix-cpu.yaml',
            f'variables.data_root={tiny_mds}', f'variables.tokenizer_dir={tiny_tokenizer}', 'model.vocab_size=512']
    for override, msg in [('train_loader.schedule.points=[{at: 0, weights: {poetry: 1}}]', "unknown stream 'poetry'"),
                          ('train_loader.schedule.points=[{at: 0, weights: {code: -1, prose: 1}}]', 'negative'),
                          ('train_loader.streams.code.local=/nonexistent', 'folder does not exist')]:
        r = subprocess.run([*base, override], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and msg in r.stderr and r.stderr.count('\n') == 1, r.stderr[-2000:]
