"""Sealing, verification and the safe loader (no Composer; tiny torch files)."""
import pickle

import pytest
import torch

from foundry_ext import safeload
from foundry_ext.checkpoint import integrity


def _ckpt(path, n=1000):
    import datetime

    import numpy as np
    torch.save({'state': {'model': {'w': torch.arange(n, dtype=torch.float32)},
                          'timestamp': {'Timestamp': {'batch': 4, 'total_wct': datetime.timedelta(seconds=3)}}},
                'rng': [{'numpy': ('MT19937', np.arange(4, dtype=np.uint32), 1, 0, 0.0)}]}, path)
    return path


def _sealed(tmp_path, name='ep0-ba4-rank0.pt'):
    t = _ckpt(tmp_path / ('.tmp-' + name))
    final = tmp_path / name
    integrity.seal_file(t, final, timestamp={'batch': 4}, config={'hf_token': 'hf_secret', 'lr': 1.0})
    return final


def test_seal_writes_manifest_then_renames(tmp_path):
    final = _sealed(tmp_path)
    assert final.is_file() and not (tmp_path / '.tmp-ep0-ba4-rank0.pt').exists()
    m = safeload.verify(final)
    assert m['complete'] and m['timestamp'] == {'batch': 4}
    assert m['files']['ep0-ba4-rank0.pt']['bytes'] == final.stat().st_size
    assert m['files']['ep0-ba4-rank0.pt']['sha256'] == safeload.sha256_file(final)


def test_manifest_config_is_redacted(tmp_path):
    m = safeload.read_manifest(_sealed(tmp_path))
    assert m['config'] == {'hf_token': '<redacted>', 'lr': 1.0}
    got = integrity.redact({'a': [{'api_key': 'xyz'}], 'tokenizer_name': 't'})
    assert got == {'a': [{'api_key': '<redacted>'}], 'tokenizer_name': 't'}


def test_truncated_and_flipped_checkpoints_are_one_line(tmp_path):
    final = _sealed(tmp_path)
    data = final.read_bytes()
    final.write_bytes(data[:-100])
    with pytest.raises(safeload.CheckpointError, match=r'ep0-ba4-rank0.pt is truncated: [\d,]+ bytes, its manifest'):
        safeload.verify(final)
    final.write_bytes(data[:50] + bytes([data[50] ^ 1]) + data[51:])
    with pytest.raises(safeload.CheckpointError, match='sha256 does not match'):
        safeload.verify(final, 'checksum')
    assert safeload.verify(final, 'size') is not None   # 'size' trusts the bytes


def test_checkpoints_without_manifest(tmp_path):
    good = _ckpt(tmp_path / 'plain.pt')
    assert safeload.verify(good) is None                 # zip CRCs check out
    cut = tmp_path / 'cut.pt'
    cut.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(safeload.CheckpointError, match='cut.pt is damaged or incomplete'):
        safeload.verify(cut)
    junk = tmp_path / 'junk.pt'
    junk.write_bytes(b'not a checkpoint at all' * 10)
    with pytest.raises(safeload.CheckpointError, match='junk.pt is not a torch checkpoint'):
        safeload.verify(junk)
    with pytest.raises(safeload.CheckpointError, match='nope.pt does not exist'):
        safeload.verify(tmp_path / 'nope.pt')
    (tmp_path / 'empty.pt').write_bytes(b'')
    with pytest.raises(safeload.CheckpointError, match='empty'):
        safeload.verify(tmp_path / 'empty.pt')


def test_bad_manifest_is_one_line(tmp_path):
    final = _sealed(tmp_path)
    safeload.manifest_path(final).write_text('{not json')
    with pytest.raises(safeload.CheckpointError, match='manifest .* is not readable'):
        safeload.verify(final)


def test_sharded_folder(tmp_path):
    d = tmp_path / 'ep0-ba8'
    d.mkdir()
    (d / '__0_0.distcp').write_bytes(b'a' * 100)
    (d / '.metadata').write_bytes(b'm' * 10)
    with pytest.raises(safeload.CheckpointError, match='no completion marker'):
        (d / '.metadata').unlink()
        safeload.verify(d)
    (d / '.metadata').write_bytes(b'm' * 10)
    integrity.seal_dir(d, timestamp={'batch': 8})
    assert safeload.verify(d)['timestamp']['batch'] == 8
    (d / '__0_0.distcp').unlink()
    with pytest.raises(safeload.CheckpointError, match='incomplete: __0_0.distcp is missing'):
        safeload.verify(d)


def test_safe_loader_reads_composer_state_and_refuses_other_objects(tmp_path):
    sd = safeload.load_checkpoint(_sealed(tmp_path))
    assert torch.equal(sd['state']['model']['w'], torch.arange(1000, dtype=torch.float32))
    evil = tmp_path / 'evil.pt'
    torch.save({'x': pickle.PickleError('boom')}, evil)
    with pytest.raises(safeload.CheckpointError, match=r'holds a pickle.PickleError object.*trusted_globals'):
        safeload.load_checkpoint(evil)
    assert isinstance(safeload.load_checkpoint(evil, trusted=['pickle.PickleError'])['x'], pickle.PickleError)
