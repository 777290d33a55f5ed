"""Bad checkpoints through the train command: exit code, one line naming the file, no traceback,
the previous good outputs untouched. The fast cases end before LLM Foundry is imported (run in
process); the model mismatch needs the model built (a subprocess, slow)."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_SEQ, TINY_VOCAB, tree_digest

YAML = str(ROOT / 'yamls' / 'pretrain' / 'tiny-cpu.yaml')


def _argv(tok, mds, run_dir, **extra):
    o = {'variables.tokenizer_dir': tok, 'variables.data_root': mds, 'variables.run_dir': run_dir,
         'variables.max_seq_len': TINY_SEQ, 'model.vocab_size': TINY_VOCAB, 'model.d_model': 32, 'model.n_heads': 2,
         'model.n_layers': 1, 'global_train_batch_size': 8, 'device_train_microbatch_size': 8,
         'device_eval_batch_size': 8, 'max_duration': '8ba', 'save_interval': '4ba',
         'scheduler.t_warmup': '2ba', **extra}
    return [YAML] + [f'{k}={v}' for k, v in o.items()]


def _train(capsys, argv):
    from foundry_ext.commands.train import main
    rc = main(argv)
    cap = capsys.readouterr()
    out = cap.out + cap.err
    assert 'Traceback' not in out, out[-3000:]
    return rc, cap.err


def _one_error(err, *needles):
    lines = [x for x in err.splitlines() if x.startswith('error:')]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _ckpt(folder, batch, size=200, sealed=True, **meta):
    from foundry_ext.checkpoint import integrity
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f'ep0-ba{batch}-rank0.pt'
    tmp = folder / f'.tmp-{p.name}'
    tmp.write_bytes(bytes([batch]) * size)
    if sealed:
        integrity.seal_file(tmp, p, timestamp={'epoch': 0, 'batch': batch, 'sample': 8 * batch}, **meta)
    else:
        os.replace(tmp, p)
    return p


@pytest.fixture
def run(tmp_path, tiny_tokenizer, tiny_mds):
    r = tmp_path / 'run'
    (r / 'checkpoints').mkdir(parents=True)
    (r / 'metrics.jsonl').write_text('{"step": 0, "loss/train/total": 6.0}\n')
    return r, lambda **kw: _argv(tiny_tokenizer, tiny_mds, r, **kw)


def test_finished_run_says_so_and_exits_0(run, capsys):
    r, argv = run
    _ckpt(r / 'checkpoints', 4)
    _ckpt(r / 'checkpoints', 8)
    before = tree_digest(r)
    rc, err = _train(capsys, argv())
    assert rc == 0, err
    (line,) = [x for x in err.splitlines() if 'already finished' in x]
    assert 'ep0-ba8-rank0.pt is at step 8' in line and 'max_duration is 8ba' in line
    assert not [x for x in err.splitlines() if x.startswith('error:')]
    assert tree_digest(r) == before


def test_truncated_latest_falls_back_and_names_the_file(run, capsys):
    r, argv = run
    good = _ckpt(r / 'checkpoints', 4)
    bad = _ckpt(r / 'checkpoints', 8)
    bad.write_bytes(bad.read_bytes()[:50])
    good_bytes = good.read_bytes()
    rc, err = _train(capsys, argv(max_duration='4ba'))   # the intact one is the run's end: no training here
    assert rc == 0
    (line,) = [x for x in err.splitlines() if 'is truncated' in x]
    assert 'ep0-ba8-rank0.pt is truncated: 50 bytes' in line and 'set it aside as ep0-ba8-rank0.pt.damaged' in line
    assert 'already finished' in err and 'ep0-ba4-rank0.pt is at step 4' in err
    assert good.read_bytes() == good_bytes and (r / 'checkpoints' / 'ep0-ba8-rank0.pt.damaged').is_file()


def test_damaged_latest_without_fallback_is_one_line(run, capsys):
    r, argv = run
    _ckpt(r / 'checkpoints', 4)
    bad = _ckpt(r / 'checkpoints', 8)
    bad.write_bytes(b'\0' * 200)     # garbage of the right size
    before = tree_digest(r)
    rc, err = _train(capsys, argv(**{'callbacks.checkpoint_integrity.fallback': 'false'}))
    assert rc == 2
    _one_error(err, str(bad), 'sha256 does not match', 'fallback=true')
    assert tree_digest(r) == before


def test_garbage_manifest_without_fallback(run, capsys):
    r, argv = run
    bad = _ckpt(r / 'checkpoints', 8)
    (r / 'checkpoints' / 'ep0-ba8-rank0.pt.manifest.json').write_text('{"format": tru')
    before = tree_digest(r)
    rc, err = _train(capsys, argv(**{'callbacks.checkpoint_integrity.fallback': 'false'}))
    assert rc == 2
    _one_error(err, str(bad), 'manifest', 'not readable')
    assert tree_digest(r) == before


@pytest.mark.parametrize('kind,needle', [('missing', 'does not exist'), ('garbage', 'is not a torch checkpoint'),
                                         ('truncated', 'is truncated'), ('flipped', 'sha256 does not match'),
                                         ('empty', 'is empty (0 bytes)')])
def test_bad_load_path_is_one_line(run, capsys, tmp_path, kind, needle):
    r, argv = run
    other = tmp_path / 'other'
    p = other / 'ep0-ba8-rank0.pt'
    if kind == 'garbage':
        _ckpt(other, 8, sealed=False)
    elif kind == 'empty':
        other.mkdir()
        p.write_bytes(b'')
    elif kind != 'missing':
        _ckpt(other, 8)
        data = p.read_bytes()
        p.write_bytes(data[:20] if kind == 'truncated' else b'\x01' + data[1:])
    before = tree_digest(r), tree_digest(other) if other.exists() else None
    rc, err = _train(capsys, argv(load_path=p))
    assert rc == 2
    _one_error(err, str(p), needle)
    assert (tree_digest(r), tree_digest(other) if other.exists() else None) == before


def test_opting_out_over_old_checkpoints_is_one_line(run, capsys):
    r, argv = run
    _ckpt(r / 'checkpoints', 4)
    before = tree_digest(r)
    rc, err = _train(capsys, argv(autoresume='false'))
    assert rc == 2
    _one_error(err, str(r / 'checkpoints'), 'already holds checkpoints', 'ep0-ba4-rank0.pt', 'save_overwrite=true')
    assert tree_digest(r) == before


def test_bad_resume_options_are_one_line(run, capsys):
    r, argv = run
    rc, err = _train(capsys, argv(**{'callbacks.preemption.signals': '[SIGTREM]'}))
    assert rc == 2
    _one_error(err, 'callbacks.preemption', "unknown signal 'SIGTREM'", "did you mean 'SIGTERM'")
    rc, err = _train(capsys, argv(save_weights_only='true', autoresume='true'))
    assert rc == 2
    _one_error(err, 'save_weights_only')


def _zip_ckpt(folder, batch, sealed=True):
    """A real torch (zip) checkpoint, sealed with a manifest or written as plain Composer does."""
    import torch
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f'ep0-ba{batch}-rank0.pt'
    tmp = folder / f'.tmp-{p.name}'
    torch.save({'state': {'model': {'w': torch.arange(4096, dtype=torch.float32) * batch}}}, tmp)
    if sealed:
        from foundry_ext.checkpoint import integrity
        integrity.seal_file(tmp, p, timestamp={'epoch': 0, 'batch': batch, 'sample': 8 * batch})
    else:
        os.replace(tmp, p)
    return p


def _lines_naming(err, name):
    """The console lines that mention ``name``; a fallback is said once, and is not an error."""
    assert not [x for x in err.splitlines() if x.startswith('error:')], err
    return [x for x in err.splitlines() if name in x]


def _finished_at(err, step):
    (line,) = [x for x in err.splitlines() if 'already finished' in x]
    assert f'ep0-ba{step}-rank0.pt is at step {step}' in line, line


def test_torn_write_is_removed_and_the_previous_checkpoint_used(run, capsys):
    """A kill during a save leaves the half-written temp file (the final name is never torn)."""
    r, argv = run
    ck = r / 'checkpoints'
    good = _zip_ckpt(ck, 4)
    torn = ck / '.tmp-ep0-ba8-rank0.pt'
    torn.write_bytes(_zip_ckpt(r / 'scratch', 8, sealed=False).read_bytes()[:3000])
    good_bytes = good.read_bytes()
    rc, err = _train(capsys, argv(max_duration='4ba'))
    assert rc == 0, err
    (line,) = _lines_naming(err, '.tmp-ep0-ba8-rank0.pt')
    assert line.startswith('foundry_ext: removed ') and 'a checkpoint write that did not finish' in line
    _finished_at(err, 4)
    assert not torn.exists() and good.read_bytes() == good_bytes


def test_wrong_sha_falls_back_to_the_previous_checkpoint(run, capsys):
    r, argv = run
    ck = r / 'checkpoints'
    _zip_ckpt(ck, 4)
    bad = _zip_ckpt(ck, 8)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF      # one flipped byte: same size, other sha256
    bad.write_bytes(bytes(data))
    rc, err = _train(capsys, argv(max_duration='4ba'))
    assert rc == 0, err
    (line,) = _lines_naming(err, 'ep0-ba8-rank0.pt')
    assert f'checkpoint {bad} is damaged: its sha256 does not match the manifest' in line
    assert 'set it aside as ep0-ba8-rank0.pt.damaged, falling back' in line
    _finished_at(err, 4)
    assert (ck / 'ep0-ba8-rank0.pt.damaged').read_bytes() == bytes(data)           # kept, never deleted
    assert (ck / 'ep0-ba8-rank0.pt.damaged.manifest.json').is_file()


def test_torn_manifest_falls_back(run, capsys):
    r, argv = run
    ck = r / 'checkpoints'
    _zip_ckpt(ck, 4)
    bad = _zip_ckpt(ck, 8)
    mp = ck / 'ep0-ba8-rank0.pt.manifest.json'
    mp.write_text(mp.read_text()[:40])
    rc, err = _train(capsys, argv(max_duration='4ba'))
    assert rc == 0, err
    (line,) = _lines_naming(err, 'ep0-ba8-rank0.pt')
    assert f'checkpoint {bad}: its manifest ep0-ba8-rank0.pt.manifest.json is not readable' in line
    assert 'falling back' in line
    _finished_at(err, 4)


def test_missing_manifest_intact_zip_is_used(run, capsys):
    """A checkpoint without a manifest (plain Composer wrote it) is checked by its zip CRCs."""
    r, argv = run
    ck = r / 'checkpoints'
    _zip_ckpt(ck, 4)
    _zip_ckpt(ck, 8, sealed=False)
    rc, err = _train(capsys, argv())
    assert rc == 0, err
    assert not [x for x in err.splitlines() if x.startswith('error:') or 'damaged' in x], err
    _finished_at(err, 8)


def test_missing_manifest_and_truncated_falls_back(run, capsys):
    r, argv = run
    ck = r / 'checkpoints'
    _zip_ckpt(ck, 4)
    bad = _zip_ckpt(ck, 8, sealed=False)
    bad.write_bytes(bad.read_bytes()[:5000])
    rc, err = _train(capsys, argv(max_duration='4ba'))
    assert rc == 0, err
    (line,) = _lines_naming(err, 'ep0-ba8-rank0.pt')
    assert f'checkpoint {bad} is damaged or incomplete' in line and 'has no completion marker' in line
    assert 'falling back' in line
    _finished_at(err, 4)


@pytest.mark.parametrize('kind,needle', [('truncated', 'is damaged or incomplete'),
                                         ('crc', 'fails its CRC-32 check')])
def test_load_path_without_manifest_damaged_is_one_line(run, capsys, tmp_path, kind, needle):
    r, argv = run
    p = _zip_ckpt(tmp_path / 'other', 8, sealed=False)
    data = bytearray(p.read_bytes())
    if kind == 'truncated':
        data = data[:5000]
    else:   # flip a byte inside the tensor data: the archive reads, the record's CRC does not match
        data[data.index(b'data/0') + 200] ^= 0xFF
    p.write_bytes(bytes(data))
    before = tree_digest(r), p.read_bytes()
    rc, err = _train(capsys, argv(load_path=p))
    assert rc == 2
    _one_error(err, str(p), needle)
    assert (tree_digest(r), p.read_bytes()) == before


@pytest.mark.slow
def test_checkpoint_of_another_model_is_one_line(run, tmp_path):
    """A real Composer checkpoint of a d_model 32 model, loaded into a d_model 64 one."""
    r, argv = run
    import torch
    from llmfoundry.models.mpt import ComposerMPTCausalLM
    model = ComposerMPTCausalLM(d_model=32, n_heads=2, n_layers=1, expansion_ratio=4, max_seq_len=TINY_SEQ,
                                vocab_size=TINY_VOCAB, no_bias=True, loss_fn='torch_crossentropy',
                                attn_config={'attn_impl': 'torch', 'alibi': False, 'rope': True, 'rope_impl': 'hf'})
    ck = tmp_path / 'd32.pt'
    torch.save({'state': {'model': model.state_dict(), 'integrations': {}, 'metadata': {}}}, ck)
    before = tree_digest(r)
    cmd = [sys.executable, 'scripts/train.py', *argv(load_path=ck, load_weights_only='true', **{'model.d_model': 64},
                                                       python_log_level='error', eval_first='false')]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 2, p.stderr[-3000:]
    assert 'Traceback' not in p.stdout + p.stderr
    # the model_check callback (added for every load_path) names the first tensor that does not fit
    _one_error(p.stderr, f'load_path {ck}: tensor', 'in the checkpoint but', 'in the model')
    assert tree_digest(r) == before
