"""atomic_dir and clean_stale_temp share one naming rule for their temporary siblings."""
import os
import subprocess
import sys

import pytest

from foundry_ext.atomic import atomic_dir, clean_stale_temp, temp_sibling


def test_atomic_dir_writes_through_the_named_temp_sibling(tmp_path):
    out = tmp_path / 'out'
    with atomic_dir(out) as tmp:
        assert tmp == temp_sibling(out, 'tmp') == tmp_path / f'.out.tmp-{os.getpid()}'
        (tmp / 'a').write_text('1')
    assert (out / 'a').read_text() == '1' and sorted(p.name for p in tmp_path.iterdir()) == ['out']
    with pytest.raises(RuntimeError), atomic_dir(out, overwrite=True) as tmp:
        (tmp / 'b').write_text('2')
        raise RuntimeError('boom')
    assert sorted(p.name for p in out.iterdir()) == ['a'] and sorted(p.name for p in tmp_path.iterdir()) == ['out']


def test_clean_stale_temp_removes_only_dead_or_own_siblings(tmp_path):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    out = tmp_path / 'out'
    stale = [temp_sibling(out, 'tmp', dead.pid), temp_sibling(out, 'old', dead.pid), temp_sibling(out, 'tmp')]
    kept = [temp_sibling(out, 'tmp', os.getppid()),          # a live process's run
            tmp_path / '.out.tmp-12x', tmp_path / '.outx.tmp-1', tmp_path / '.out.new-1', tmp_path / 'out']
    for p in stale + kept:
        p.mkdir()
    (tmp_path / f'.out.tmp-{dead.pid}0').write_text('a file, not a folder')
    kept.append(tmp_path / f'.out.tmp-{dead.pid}0')
    assert sorted(clean_stale_temp(out)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(kept)
    assert clean_stale_temp(tmp_path / 'missing' / 'out') == []
