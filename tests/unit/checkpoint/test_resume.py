"""Which checkpoint a re-run resumes from, and the train command's resume defaults (no torch)."""
import os

import pytest

from foundry_ext.checkpoint import integrity, resume
from foundry_ext.errors import UserError


def _write(folder, batch, size=100, sealed=True, **meta):
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f'ep0-ba{batch}-rank0.pt'
    t = folder / f'.tmp-{p.name}'
    t.write_bytes(bytes([batch % 256]) * size)
    if sealed:
        integrity.seal_file(t, p, timestamp={'epoch': 0, 'batch': batch, 'sample': batch * 4, 'token': batch * 256},
                            **meta)
    else:
        os.replace(t, p)
    return p


def _settings(cfg, tmp_path, name='tiny.yaml'):
    return resume.resume_defaults(cfg, tmp_path / name)


def _cfg(folder, **kw):
    return {'max_duration': '20ba', 'save_folder': str(folder), 'run_name': 'r', **kw}


def test_defaults_make_any_config_resumable(tmp_path, monkeypatch):
    monkeypatch.delenv('RUN_NAME', raising=False)
    cfg = {'max_duration': '10ba', 'callbacks': None}
    st = _settings(cfg, tmp_path, 'my-sft.yaml')
    assert cfg['run_name'] == 'my-sft' and cfg['save_folder'] == 'runs/my-sft/checkpoints'
    assert cfg['autoresume'] is False      # local folder: we choose the checkpoint, Composer loads load_path
    assert cfg['callbacks'] == {'checkpoint_integrity': {}, 'preemption': {}}
    assert st.enabled and st.folder.as_posix() == 'runs/my-sft/checkpoints' and len(st.notes) == 2
    remote = {'max_duration': '10ba', 'save_folder': 's3://b/{run_name}/ckpt', 'run_name': 'x'}
    st = _settings(remote, tmp_path)
    assert st.remote and st.folder is None and remote['autoresume'] is True   # Composer's autoresume
    off = {'max_duration': '10ba', 'autoresume': False}
    st = _settings(off, tmp_path)
    assert not st.enabled and 'save_folder' not in off and 'run_name' not in off
    with pytest.raises(UserError, match='save_weights_only'):
        _settings({'autoresume': True, 'save_weights_only': True}, tmp_path)
    assert not _settings({'save_weights_only': True}, tmp_path).enabled
    with pytest.raises(UserError, match='checkpoint_integrity.verify'):
        _settings({'callbacks': {'checkpoint_integrity': {'verify': 'md5'}}}, tmp_path)


def test_resumes_from_newest_and_finishes(tmp_path):
    folder = tmp_path / 'ck'
    _write(folder, 5)
    os.symlink('ep0-ba5-rank0.pt', folder / 'latest-rank0.pt')
    _write(folder, 10, config={'optimizer': {'lr': 1.0}, 'max_duration': '20ba'})
    cfg = _cfg(folder, optimizer={'lr': 2.0})
    d = resume.decide(cfg, _settings(cfg, tmp_path))
    assert d.load_path == str(folder / 'ep0-ba10-rank0.pt') and d.step == 10 and not d.finished and d.error is None
    assert 'resuming run r from' in d.lines[0] and 'at step 10' in d.lines[0]
    assert 'optimizer.lr (1.0 -> 2.0)' in d.lines[1]
    assert os.readlink(folder / 'latest-rank0.pt') == 'ep0-ba10-rank0.pt'
    resume.apply(cfg, d)
    assert cfg['load_path'] == d.load_path and cfg['load_weights_only'] is False
    cfg = _cfg(folder, max_duration='10ba')
    d = resume.decide(cfg, _settings(cfg, tmp_path))
    assert d.finished and len(d.lines) == 1 and 'already finished' in d.lines[0] and 'step 10' in d.lines[0]
    cfg = _cfg(folder, max_duration='2560tok')
    assert resume.decide(cfg, _settings(cfg, tmp_path)).finished


def test_damaged_newest_falls_back_and_is_kept_aside(tmp_path):
    folder = tmp_path / 'ck'
    good = _write(folder, 4)
    bad = _write(folder, 8)
    bad.write_bytes(bad.read_bytes()[:40])
    (folder / '.tmp-ep0-ba12-rank0.pt').write_bytes(b'half')         # a write a kill interrupted
    (folder / 'ep0-ba2-rank0.pt.manifest.json').write_text('{}')     # rotated away
    cfg = _cfg(folder)
    d = resume.decide(cfg, _settings(cfg, tmp_path))
    assert d.load_path == str(good) and d.step == 4
    assert any('removed' in x and '.tmp-ep0-ba12' in x for x in d.lines)
    hit = [x for x in d.lines if 'ep0-ba8-rank0.pt is truncated' in x]
    assert len(hit) == 1 and 'set it aside as ep0-ba8-rank0.pt.damaged' in hit[0]
    assert (folder / 'ep0-ba8-rank0.pt.damaged').stat().st_size == 40
    assert not (folder / '.tmp-ep0-ba12-rank0.pt').exists()
    assert not (folder / 'ep0-ba2-rank0.pt.manifest.json').exists()
    assert [c.step for c in resume.list_checkpoints(folder).candidates] == [4]


def test_no_fallback_is_one_line_error(tmp_path):
    folder = tmp_path / 'ck'
    _write(folder, 4)
    bad = _write(folder, 8)
    bad.write_bytes(b'x' * 100)      # same size, other bytes
    cfg = _cfg(folder, callbacks={'checkpoint_integrity': {'fallback': False}})
    d = resume.decide(cfg, _settings(cfg, tmp_path))
    assert d.load_path is None and 'ep0-ba8-rank0.pt is damaged: its sha256' in d.error
    assert 'fallback=true' in d.error and '\n' not in d.error
    assert bad.exists()              # untouched


def test_unsealed_checkpoints_are_checked_by_their_zip(tmp_path):
    import zipfile
    folder = tmp_path / 'ck'
    folder.mkdir()
    with zipfile.ZipFile(folder / 'ep0-ba3-rank0.pt', 'w') as z:    # what plain Composer writes
        z.writestr('archive/data.pkl', b'\x80\x02' + b'x' * 50)
    (folder / 'ep0-ba6-rank0.pt').write_bytes((folder / 'ep0-ba3-rank0.pt').read_bytes()[:30])
    (folder / 'notes.txt').write_text('not a checkpoint')
    cfg = _cfg(folder)
    d = resume.decide(cfg, _settings(cfg, tmp_path))
    assert d.step == 3 and any('ep0-ba6-rank0.pt is damaged or incomplete' in x for x in d.lines)


def test_all_damaged_starts_over_and_says_so(tmp_path):
    folder = tmp_path / 'ck'
    _write(folder, 4).write_bytes(b'')
    cfg = _cfg(folder)
    d = resume.decide(cfg, _settings(cfg, tmp_path))
    assert d.load_path is None and d.error is None and 'no intact checkpoint left' in d.lines[-1]


def test_opt_out_with_checkpoints_and_load_path_checks(tmp_path):
    folder = tmp_path / 'ck'
    _write(folder, 4)
    cfg = _cfg(folder, autoresume=False)
    d = resume.decide(cfg, _settings(cfg, tmp_path))
    assert 'already holds checkpoints' in d.error and 'save_overwrite=true' in d.error
    cfg = _cfg(folder, autoresume=False, save_overwrite=True)
    assert resume.decide(cfg, _settings(cfg, tmp_path)).error is None
    cfg = _cfg(tmp_path / 'new', load_path=str(tmp_path / 'missing.pt'))
    d = resume.decide(cfg, _settings(cfg, tmp_path))
    assert 'load_path' in d.error and 'missing.pt does not exist' in d.error
    lp = _write(tmp_path / 'other', 7)
    lp.write_bytes(lp.read_bytes()[:10])
    cfg = _cfg(tmp_path / 'new2', load_path=str(lp))
    assert 'ep0-ba7-rank0.pt is truncated' in resume.decide(cfg, _settings(cfg, tmp_path)).error
    cfg = _cfg(folder, load_path=str(lp))      # a resumable checkpoint wins over load_path, as in Composer
    assert resume.decide(cfg, _settings(cfg, tmp_path)).step == 4


def test_pending_eval_is_not_finished(tmp_path):
    folder = tmp_path / 'ck'
    _write(folder, 20, pending_eval={'batch': 20, 'event': 'FIT_END', 'previous_timestamp': None})
    cfg = _cfg(folder)
    d = resume.decide(cfg, _settings(cfg, tmp_path))
    assert not d.finished and d.pending_eval['event'] == 'FIT_END' and 'first the evaluation' in d.lines[0]


def test_durations():
    assert resume.parse_duration('200ba') == (200, 'batch') and resume.parse_duration(3) == (3, 'epoch')
    assert resume.parse_duration('0.5dur') is None and resume.parse_duration(True) is None
    assert resume.is_finished({'batch': 10}, '10ba') and not resume.is_finished({'batch': 9}, '10ba')
    assert not resume.is_finished(None, '10ba') and not resume.is_finished({'batch': 10}, '10tok')
