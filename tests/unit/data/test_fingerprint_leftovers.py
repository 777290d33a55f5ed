"""Data fingerprint (checkpointed identity of the MDS data) and streaming leftovers of killed runs."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT


def test_fingerprint_of_loaders(tiny_mds, tmp_path):
    from foundry_ext.data import fingerprint as fp
    corpus = {'name': 'corpus_text', 'dataset': {'root': str(tiny_mds), 'split': 'train'}}
    mix = {'name': 'mixture', 'split': 'train', 'streams': {d: {'local': str(tiny_mds / d)} for d in ('code', 'prose')}}
    text = {'name': 'text', 'dataset': {'local': str(tiny_mds / 'code'), 'split': 'train'}}
    a = fp.loader_datasets(corpus)
    assert set(a) == {'arithmetic', 'code', 'prose', 'records'}
    assert fp.loader_datasets(mix) == {k: a[k] for k in ('code', 'prose')}
    assert fp.loader_datasets(text) == {'dataset': a['code']}
    moved = tmp_path / 'moved'
    shutil.copytree(tiny_mds, moved)                       # the same data elsewhere: the same identity
    assert fp.loader_datasets({**corpus, 'dataset': {'root': str(moved), 'split': 'train'}}) == a
    cfg = {'train_loader': mix, 'callbacks': {'data_fingerprint': {'allow_data_change': True}}}
    assert fp.add_to_config(cfg) == fp.combine(fp.loader_datasets(mix))
    assert cfg['callbacks']['data_fingerprint']['allow_data_change'] is True


def test_resume_on_other_data_is_refused_in_one_line():
    from foundry_ext.data import fingerprint as fp
    from foundry_ext.errors import UserError
    now = {'code': 'a' * 64, 'prose': 'b' * 64}
    saved = {'fingerprint': fp.combine({'code': 'a' * 64, 'prose': 'c' * 64}), 'datasets': {'code': 'a' * 64,
                                                                                          'prose': 'c' * 64}}
    cb = fp.DataFingerprint(fingerprint=fp.combine(now), datasets=now)
    cb.load_state_dict({'fingerprint': fp.combine(now), 'datasets': now})          # same data: fine
    cb.load_state_dict({})                                                           # older checkpoint: fine
    with pytest.raises(UserError) as e:
        cb.load_state_dict(saved)
    msg = str(e.value)
    assert 'trained on different data than this config reads (changed: prose)' in msg
    assert 'callbacks.data_fingerprint.allow_data_change=true' in msg and '\n' not in msg
    fp.DataFingerprint(fingerprint=fp.combine(now), datasets=now, allow_data_change=True).load_state_dict(saved)
    assert cb.state_dict() == {'fingerprint': fp.combine(now), 'datasets': now}


def test_callback_options_validate_before_import():
    from foundry_ext.config.validate import check_owned
    ps = []
    check_owned('callback', 'data_fingerprint', {'allow_data_chnage': True}, 'callbacks.data_fingerprint', ps)
    assert ps == ["unknown key callbacks.data_fingerprint.allow_data_chnage; did you mean 'allow_data_change'?"]


def test_leftovers_only_dead_prefixes_are_removed(tmp_path):
    from foundry_ext.data.leftovers import clean_stale_streaming_state
    shm, tmp = tmp_path / 'shm', tmp_path / 'tmp'
    shm.mkdir()
    tmp.mkdir()
    for name in ('locals', 'barrier', 'shard_states'):
        (shm / f'900001_{name}').write_bytes(b'x' * 8)            # dead: nobody holds it
        (shm / f'900002_{name}').write_bytes(b'y' * 8)            # live: held open below
    for name in ('barrier_filelock', 'cache_filelock'):
        (tmp / f'900001_{name}').touch()
        (tmp / f'900003_{name}').touch()                          # a finished run's lock files
    (tmp / 'unrelated_file').touch()
    held = open(shm / '900002_locals', 'rb')
    try:
        removed = clean_stale_streaming_state(str(shm), str(tmp))
    finally:
        held.close()
    assert removed == (3, 4)
    assert sorted(p.name for p in shm.iterdir()) == ['900002_barrier', '900002_locals', '900002_shard_states']
    # the live prefix got lock files so streaming skips it instead of failing on it
    assert sorted(p.name for p in tmp.iterdir()) == ['900002_barrier_filelock', '900002_cache_filelock',
                                                    'unrelated_file']


KILLED = '''
import os, sys
from streaming import StreamingDataset
ds = StreamingDataset(remote=sys.argv[1], local=sys.argv[2], batch_size=4, shuffle=False)
print(ds._shm_prefix_int, flush=True)
for i, _ in enumerate(ds):
    if i == 5 and sys.argv[3] == 'kill':
        os.killpg(0, 9)          # the whole group, as a scheduler does: nothing cleans up
print('read', i + 1)
'''


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir('/dev/shm'), reason='Linux shared memory')
def test_killed_streaming_run_does_not_break_the_next(tiny_mds, tmp_path):
    """kill -9 of a run mid-epoch leaves streaming's shared memory behind; with another TMPDIR (a
    scheduler's per-job one) the next run on the same cache failed with 'Reused local directory'."""
    script = tmp_path / 'killed.py'
    script.write_text(KILLED)
    remote, local = str(tiny_mds / 'code' / 'train'), str(tmp_path / 'cache')
    (tmp_path / 't1').mkdir()
    (tmp_path / 't2').mkdir()
    env = {**os.environ, 'TMPDIR': str(tmp_path / 't1')}
    r = subprocess.run([sys.executable, str(script), remote, local, 'kill'], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=300, start_new_session=True)
    assert r.returncode == -9
    prefix = int(r.stdout.split()[0])
    assert os.path.exists(f'/dev/shm/{prefix:06d}_locals')          # the leak this is about
    code = ('import sys, runpy; from foundry_ext.data.leftovers import clean_stale_streaming_state;'
            'clean_stale_streaming_state(); sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")')
    r = subprocess.run([sys.executable, '-c', code, str(script), remote, local, 'no'], capture_output=True,
                       text=True, cwd=ROOT, env={**os.environ, 'TMPDIR': str(tmp_path / 't2')}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'read ' in r.stdout and 'Reused local directory' not in r.stderr
