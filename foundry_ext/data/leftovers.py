"""What a killed streaming run leaves behind, removed safely before the next one starts.

``StreamingDataset`` registers a numbered prefix per dataset and creates shared memory
(``/dev/shm/<prefix>_locals``, ``_barrier``, ``_shard_states`` ...) and lock files
(``<tmp>/<prefix>_barrier_filelock``, ``_cache_filelock``). On a normal exit the shared memory is
unlinked but the lock files stay, and every later run skips their prefixes; after a SIGKILL of the
whole process group (a scheduler, OOM killer, ``kill -9 -<pgid>``) the shared memory stays too, and
a run that reads a remote into the same local cache then fails with streaming's
``Reused local directory`` error (after ~100 retries), unless its lock files happen to survive.

streaming's own ``clean_stale_shared_memory()`` unlinks every prefix, also those of runs still
alive on the same machine. :func:`clean_stale_streaming_state` removes a prefix only when no live
process maps or holds open any of its files (read from ``/proc``), so it is safe on a shared
machine. A prefix whose shared memory some live process still holds (its owner, or another run's
streaming that attached to it while looking for a free prefix, which streaming never closes) gets
its missing lock files back instead, so streaming skips it rather than failing on it (the lock
files of a different ``TMPDIR``, e.g. a scheduler's per-job one, are missing that way too).
Linux only (elsewhere it does nothing). No torch, no streaming import.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

SHM_NAMES = ('locals', 'barrier', 'next_epoch', 'cache_usage', 'shard_states', 'shard_access_times', 'resume',
             'epoch_shape', 'epoch_data')
LOCK_NAMES = ('barrier_filelock', 'cache_filelock')
_SHM = re.compile(r'^(\d{6})_(' + '|'.join(SHM_NAMES) + r')$')
_LOCK = re.compile(r'^(\d{6})_(' + '|'.join(LOCK_NAMES) + r')$')


def _mine(p: Path) -> bool:
    try:
        return os.geteuid() == 0 or p.stat().st_uid == os.geteuid()
    except OSError:
        return False


def in_use(paths: set[str], proc: str = '/proc') -> set[str]:
    """The subset of ``paths`` some live process maps (``/proc/<pid>/maps``) or holds open (``fd/``)."""
    used: set[str] = set()
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return set(paths)                       # cannot tell: treat everything as in use
    for pid in pids:
        try:
            with open(f'{proc}/{pid}/maps') as f:
                maps = f.read()
        except OSError:
            maps = ''
        for p in paths:
            if p in maps:
                used.add(p)
        try:
            for fd in os.listdir(f'{proc}/{pid}/fd'):
                try:
                    target = os.readlink(f'{proc}/{pid}/fd/{fd}')
                except OSError:
                    continue
                if target in paths:
                    used.add(target)
        except OSError:
            pass
    return used


def clean_stale_streaming_state(shm_dir: str = '/dev/shm', tmp_dir: Optional[str] = None) -> tuple[int, int]:
    """Remove streaming's shared memory and lock files of dead runs; (shm removed, locks removed)."""
    shm, tmp = Path(shm_dir), Path(tmp_dir or tempfile.gettempdir())
    if not shm.is_dir() or not Path('/proc/self/maps').exists():
        return 0, 0
    groups: dict[str, list[Path]] = defaultdict(list)
    for folder, pattern in ((shm, _SHM), (tmp, _LOCK)):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for n in names:
            m = pattern.match(n)
            if m and _mine(folder / n):
                groups[m.group(1)].append(folder / n)
    if not groups:
        return 0, 0
    used = in_use({str(p) for files in groups.values() for p in files})
    removed_shm = removed_locks = 0
    for prefix, files in groups.items():
        if any(str(p) in used for p in files):  # a live process holds this prefix: keep it, fence it off
            if any(p.parent == shm for p in files):
                for lock in LOCK_NAMES:
                    with contextlib.suppress(OSError):
                        (tmp / f'{prefix}_{lock}').touch(exist_ok=True)
            continue
        for p in files:
            try:
                p.unlink()
            except FileNotFoundError:
                continue
            except OSError:
                continue
            if p.parent == shm:
                removed_shm += 1
            else:
                removed_locks += 1
    if removed_shm or removed_locks:
        log.info('removed %d stale streaming shared-memory block(s) and %d lock file(s) of earlier runs',
                 removed_shm, removed_locks)
    return removed_shm, removed_locks
