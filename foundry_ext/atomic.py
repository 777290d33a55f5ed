"""Atomic output folders: a crash never leaves a half-written result behind.

``atomic_dir(out)`` writes into a hidden sibling ``.<name>.tmp-<pid>`` and renames it onto
``out`` at the end (the previous ``out``, if any, is first moved aside to ``.<name>.old-<pid>``
and removed after). A run killed in between leaves such a sibling behind; ``clean_stale_temp``
removes those of processes that no longer run. Both use ``temp_sibling`` / ``_stale_pid``, the
one definition of the naming rule.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator, Literal, Optional

from foundry_ext.errors import UserError

TempKind = Literal['tmp', 'old']
_KINDS: tuple[TempKind, ...] = ('tmp', 'old')


def _temp_name(name: str, kind: TempKind, pid: int | str) -> str:
    """THE naming rule of the temporary siblings: ``.<name>.<kind>-<pid>``."""
    return f'.{name}.{kind}-{pid}'


def temp_sibling(out: Path, kind: TempKind, pid: Optional[int] = None) -> Path:
    """The temporary sibling of ``out`` of this kind, for process ``pid`` (default: this one)."""
    return out.parent / _temp_name(out.name, kind, os.getpid() if pid is None else pid)


def _stale_pid(out_name: str, entry: str) -> Optional[int]:
    """The pid in ``entry`` if it is a temporary sibling name of ``out_name``, else None."""
    for kind in _KINDS:
        prefix = _temp_name(out_name, kind, '')
        digits = entry[len(prefix):]
        if entry.startswith(prefix) and digits.isascii() and digits.isdigit():
            return int(digits)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, owned by someone else
        pass
    return True


def clean_stale_temp(out: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``out`` left by runs that were killed (their process is
    gone) or by this process; returns the folders removed."""
    out = Path(out)
    removed: list[Path] = []
    if not out.parent.is_dir():
        return removed
    for p in sorted(out.parent.iterdir()):
        pid = _stale_pid(out.name, p.name)
        if pid is None or not p.is_dir():
            continue
        if pid == os.getpid() or not _alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``out`` in one rename.

    On any exception the temporary folder is removed and ``out`` is left as it was.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f'output folder {out} already exists; pass --overwrite to replace it '
                        'or choose another --out')
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out, 'tmp')
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = temp_sibling(out, 'old')
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
