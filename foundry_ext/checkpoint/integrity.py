"""Writing checkpoints whole: atomic sealing with a manifest (completion marker + sha256 + config).

A monolithic checkpoint ``X`` is written to ``.tmp-X``, fsynced, hashed, its manifest
``X.manifest.json`` written, and only then renamed to ``X``: a file named ``X`` is complete, and a
crash leaves at most a ``.tmp-`` file (removed by the next start). A sharded checkpoint folder
gets its manifest once every rank has written its files. Reading and verifying is
:mod:`foundry_ext.safeload` (re-exported here).
"""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any, Optional

from foundry_ext.runs.redact import redact  # the one redaction rule (keys, env secrets, URL passwords)
from foundry_ext.safeload import (
    DAMAGED_SUFFIX,
    FORMAT,
    MANIFEST_SUFFIX,
    SAFE_GLOBALS,
    SETTINGS,
    TMP_PREFIX,
    CheckpointError,
    load_checkpoint,
    manifest_path,
    mark_verified,
    read_manifest,
    safe_load,
    sha256_file,
    verify,
)
from foundry_ext.safeload import files_of as _files_of


def describe_files(ckpt: str | os.PathLike, checksum: bool = True, name: Optional[str] = None) -> dict[str, dict]:
    """``{relative name: {bytes, sha256}}`` of a checkpoint file or folder. ``name``: the name a
    single file is recorded under (its final name, when it is still a temporary file)."""
    out = {}
    for rel, p in _files_of(Path(ckpt)):
        if name is not None and not Path(ckpt).is_dir():
            rel = name
        out[rel] = {'bytes': p.stat().st_size, 'sha256': sha256_file(p) if checksum else None}
    return out


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f'{TMP_PREFIX}{os.getpid()}-{path.name}')
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ('foundry-ext', 'mosaicml', 'llm-foundry', 'torch'):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def write_manifest(ckpt: str | os.PathLike, files: dict[str, dict], **meta: Any) -> dict[str, Any]:
    """Write ``ckpt``'s manifest (atomically). ``meta``: timestamp, run_name, config (redacted),
    pending_eval."""
    if meta.get('config') is not None:
        meta['config'] = redact(meta['config'])
    m = {'format': FORMAT, 'complete': True, 'files': files,
         'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
         'versions': _versions(), **meta}
    _atomic_write_text(manifest_path(ckpt), json.dumps(m, indent=1, default=str))
    return m


def update_manifest(ckpt: str | os.PathLike, **meta: Any) -> None:
    """Change fields of an existing manifest (e.g. ``pending_eval``), atomically."""
    m = read_manifest(ckpt)
    if m is None:
        return
    m.update(meta)
    _atomic_write_text(manifest_path(ckpt), json.dumps(m, indent=1, default=str))


def seal_file(tmp: str | os.PathLike, final: str | os.PathLike, checksum: bool = True, **meta: Any) -> dict:
    """``tmp`` is a completely written checkpoint: record it in ``final``'s manifest, then rename
    it to ``final``. A crash before the rename leaves ``final`` as it was."""
    tmp, final = Path(tmp), Path(final)
    with open(tmp, 'rb+') as f:
        os.fsync(f.fileno())
    m = write_manifest(final, describe_files(tmp, checksum, name=final.name), **meta)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return m


def seal_dir(ckpt: str | os.PathLike, checksum: bool = True, **meta: Any) -> dict:
    """A sharded checkpoint folder whose files are all written: write its manifest."""
    return write_manifest(ckpt, describe_files(ckpt, checksum), **meta)


__all__ = ['DAMAGED_SUFFIX', 'FORMAT', 'MANIFEST_SUFFIX', 'SAFE_GLOBALS', 'SETTINGS', 'TMP_PREFIX', 'CheckpointError',
           'describe_files', 'load_checkpoint', 'manifest_path', 'mark_verified', 'read_manifest', 'redact',
           'safe_load', 'seal_dir', 'seal_file', 'sha256_file', 'update_manifest', 'verify', 'write_manifest']
