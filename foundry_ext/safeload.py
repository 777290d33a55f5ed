"""Reading checkpoints safely: verification against the manifest, and the one safe loader.

Every checkpoint ``X`` that foundry_ext writes (a file, or the folder of a sharded checkpoint)
has a sibling ``X.manifest.json`` -- its completion marker -- listing each file's size and
sha256, the training timestamp, the run name and the config that made it (written by
:mod:`foundry_ext.checkpoint.integrity`). :func:`verify` checks a checkpoint against it (sizes
always, sha256 with ``level='checksum'``); a checkpoint without one (written by plain Composer)
is checked through the CRC-32 of every record of its zip archive.

:func:`load_checkpoint` is the one loader for every checkpoint foundry_ext reads (resumption
through Composer, the spike guard's rollback, the gauntlet, exports): verify, then
``torch.load(weights_only=True)`` with an allow-list (:data:`SAFE_GLOBALS`) of the few plain
types Composer's resumption state holds besides tensors -- numpy arrays of the RNG state,
``datetime.timedelta`` wall-clock times, torch's version string. Nothing else is unpickled
unless the user names it (``callbacks.checkpoint_integrity.trusted_globals``). Every problem is
a :class:`CheckpointError`: one line naming the file.

Ground floor (used from ``stability/`` up); imports torch only inside :func:`safe_load`.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Iterable, Optional

from foundry_ext.errors import UserError

FORMAT = 'foundry_ext.checkpoint/1'
MANIFEST_SUFFIX = '.manifest.json'
TMP_PREFIX = '.tmp-'
DAMAGED_SUFFIX = '.damaged'
_CHUNK = 8 << 20

# What Composer's resumption state needs beyond tensors and plain containers (measured on its
# checkpoints: the numpy RNG state, timestamps' wall-clock durations, torch's version string).
SAFE_GLOBALS = (
    'numpy.ndarray', 'numpy.dtype', 'numpy._core.multiarray._reconstruct', 'numpy.core.multiarray._reconstruct',
    'numpy._core.multiarray.scalar', 'numpy.core.multiarray.scalar',
    'datetime.timedelta', 'datetime.datetime', 'datetime.date', 'datetime.time', 'datetime.timezone',
    'torch.torch_version.TorchVersion', 'collections.OrderedDict', 'collections.defaultdict',
)


class CheckpointError(UserError):
    """A checkpoint that is missing, incomplete, damaged or unsafe to unpickle (one line)."""


def manifest_path(ckpt: str | os.PathLike) -> Path:
    p = Path(ckpt)
    return p.with_name(p.name + MANIFEST_SUFFIX)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            b = f.read(_CHUNK)
            if not b:
                return h.hexdigest()
            h.update(b)


def read_manifest(ckpt: str | os.PathLike) -> Optional[dict[str, Any]]:
    """The manifest of ``ckpt`` (None when there is none); a manifest that is not valid json
    raises :class:`CheckpointError`."""
    mp = manifest_path(ckpt)
    if not mp.is_file():
        return None
    try:
        m = json.loads(mp.read_text(encoding='utf-8'))
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise CheckpointError(f'checkpoint {ckpt}: its manifest {mp.name} is not readable ({e}); '
                              'the checkpoint cannot be verified') from None
    if not isinstance(m, dict) or m.get('format') != FORMAT or not isinstance(m.get('files'), dict):
        raise CheckpointError(f'checkpoint {ckpt}: {mp.name} is not a foundry_ext checkpoint manifest')
    return m


def files_of(ckpt: Path) -> list[tuple[str, Path]]:
    if ckpt.is_dir():
        return sorted((p.relative_to(ckpt).as_posix(), p) for p in ckpt.rglob('*') if p.is_file())
    return [(ckpt.name, ckpt)]


def _n(b: int) -> str:
    return f'{b:,}'


def _verify_zip(p: Path) -> None:
    try:
        with zipfile.ZipFile(p) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f'checkpoint {p} is damaged or incomplete ({e}); it has no completion '
                              f'marker ({p.name}{MANIFEST_SUFFIX}) and its zip archive does not read') from None
    if bad is not None:
        raise CheckpointError(f'checkpoint {p} is damaged: record {bad} fails its CRC-32 check')


def _is_zip(p: Path) -> bool:
    """A torch zip checkpoint, complete or not (by its first local-file header)."""
    with open(p, 'rb') as f:
        return f.read(4) == b'PK\x03\x04'


def _other_format(p: Path) -> bool:
    """What plain Composer may also write: tar(.gz), a compressed .pt, torch's legacy pickle."""
    import tarfile
    name = p.name
    if name.endswith(('.lz4', '.zst', '.gz', '.bz2', '.xz', '.lzma', '.lzo', '.tar')):
        return True
    with open(p, 'rb') as f:
        head = f.read(2)
    return head[:1] == b'\x80' or tarfile.is_tarfile(p)


# (path, size, mtime_ns) of checkpoints already verified in this process (each is read once).
_VERIFIED: set[tuple[str, int, int]] = set()


def _key(p: Path) -> tuple[str, int, int]:
    st = p.stat()
    return (str(p.resolve()), st.st_size, st.st_mtime_ns)


def mark_verified(ckpt: str | os.PathLike) -> None:
    p = Path(ckpt)
    for _, f in files_of(p):
        _VERIFIED.add(_key(f))


def verify(ckpt: str | os.PathLike, level: str = 'checksum') -> Optional[dict[str, Any]]:
    """Check ``ckpt`` (a checkpoint file, a link to one, or a sharded checkpoint folder).

    ``level``: ``'checksum'`` (sizes and sha256 against the manifest) or ``'size'`` (sizes only).
    Returns the manifest (a dict), or None for a checkpoint written without one (plain Composer)
    whose zip CRC-32s check out (or a tar / compressed / legacy-pickle file, left to the loader).
    Raises :class:`CheckpointError` -- one line naming the file and what is wrong (missing, empty,
    truncated, altered, unreadable manifest, not a torch checkpoint). A file verified once in this
    process (same path, size and mtime) is not re-hashed. Stable public API."""
    p = Path(ckpt)
    if not p.exists():
        raise CheckpointError(f'checkpoint {p} does not exist' + (' (a dangling link)' if p.is_symlink() else ''))
    if p.is_symlink():
        p = p.resolve()
    m = read_manifest(p)
    if m is None:
        if p.is_file() and _is_zip(p):
            if _key(p) not in _VERIFIED:
                _verify_zip(p)
                _VERIFIED.add(_key(p))
            return None
        if p.is_file() and p.stat().st_size == 0:
            raise CheckpointError(f'checkpoint {p} is empty (0 bytes): it was not written')
        if p.is_file() and not _other_format(p):
            raise CheckpointError(f'checkpoint {p} is not a torch checkpoint (neither a zip archive, a tar file, '
                                  'a compressed file nor a pickle)')
        if p.is_dir() and not (p / '.metadata').is_file():
            raise CheckpointError(f'checkpoint folder {p} has no completion marker ({p.name}{MANIFEST_SUFFIX}) '
                                  'and no .metadata: it is incomplete')
        return None  # tar / compressed / legacy-pickle checkpoints of plain Composer: the loader tells
    for rel, want in m['files'].items():
        f = p if p.is_file() else p / rel
        if not f.is_file():
            raise CheckpointError(f'checkpoint {p} is incomplete: {rel} is missing')
        size = f.stat().st_size
        if size != want.get('bytes'):
            how = 'truncated' if size < int(want.get('bytes') or 0) else 'longer than written'
            raise CheckpointError(f'checkpoint {f} is {how}: {_n(size)} bytes, its manifest says '
                                  f"{_n(int(want.get('bytes') or 0))}")
        if level == 'checksum' and want.get('sha256') and _key(f) not in _VERIFIED:
            if sha256_file(f) != want['sha256']:
                raise CheckpointError(f'checkpoint {f} is damaged: its sha256 does not match the manifest '
                                      '(the bytes changed after it was written)')
            _VERIFIED.add(_key(f))
    return m


# ------------------------------------------------------------------------------ the safe loader


def _resolve(dotted: str) -> Any:
    parts = dotted.split('.')
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module('.'.join(parts[:i]))
        except ImportError:
            continue
        try:
            for a in parts[i:]:
                obj = getattr(obj, a)
            return obj
        except AttributeError:
            return None
    return None


def allowed_by_name(trusted: Iterable[str] = ()) -> dict[str, Any]:
    """The allow-list by the names checkpoints use: :data:`SAFE_GLOBALS`, the dotted names in
    ``trusted`` and numpy's dtype classes (names that do not import here are skipped). Shared with
    :mod:`foundry_ext.checkpoint.load`, which reads checkpoints for export."""
    out: dict[str, Any] = {}
    for name in (*SAFE_GLOBALS, *trusted):
        obj = _resolve(name)
        if obj is not None:
            out[name] = obj
    try:
        import numpy.dtypes as npd  # numpy >= 1.25: the dtype classes of numpy arrays
        out.update({f'numpy.dtypes.{n}': getattr(npd, n) for n in dir(npd) if n.endswith('DType')})
    except ImportError:
        pass
    return out


def allowed_globals(trusted: Iterable[str] = ()) -> list[Any]:
    """The allow-list for ``torch.serialization.safe_globals``; an object whose own name differs from
    the pickled one (e.g. ``pickle.PickleError`` = ``_pickle.PickleError``) is listed under the name
    the checkpoint uses."""
    out: list[Any] = []
    for name, obj in allowed_by_name(trusted).items():
        own = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
        out.append(obj if own == name else (obj, name))
    return out


_GLOBAL = re.compile(r'GLOBAL (\S+)')


def safe_load(path: str | os.PathLike, map_location: Any = 'cpu', trusted: Iterable[str] = ()) -> Any:
    """``torch.load(path, map_location=..., weights_only=True)`` with :data:`SAFE_GLOBALS` (and the
    dotted names in ``trusted``) allowed, nothing else unpickled. No verification (see
    :func:`load_checkpoint`). Raises :class:`CheckpointError`: one line naming the file and, for a
    disallowed object, its class and how to trust it. Stable public API."""
    import pickle

    import torch
    try:
        with torch.serialization.safe_globals(allowed_globals(trusted)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        m = _GLOBAL.search(str(e))
        if m:
            raise CheckpointError(
                f'checkpoint {path} holds a {m.group(1)} object, which the safe loader does not unpickle '
                '(weights_only=True with an allow-list); if you trust the file, add '
                f'"{m.group(1)}" to callbacks.checkpoint_integrity.trusted_globals') from None
        raise CheckpointError(f'checkpoint {path} cannot be read: {_first_line(e)}') from None
    except FileNotFoundError:
        raise CheckpointError(f'checkpoint {path} does not exist') from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f'checkpoint {path} cannot be read ({_first_line(e)}); it is damaged or '
                              'not a torch checkpoint') from None


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__


# Set by the checkpoint_integrity callback / the train command: how Composer's loads verify.
SETTINGS: dict[str, Any] = {'verify': 'checksum', 'trusted_globals': ()}


def load_checkpoint(path: str | os.PathLike, map_location: Any = 'cpu', verify_level: Optional[str] = None,
                    trusted: Optional[Iterable[str]] = None) -> Any:
    """The one safe loader for every checkpoint foundry_ext reads: :func:`verify` (at
    ``verify_level``, default :data:`SETTINGS` ``['verify']``), then :func:`safe_load` (with
    ``trusted``, default :data:`SETTINGS` ``['trusted_globals']``). Returns what ``torch.load``
    returns (Composer's ``{'state': ..., 'rng': ...}`` for its checkpoints). Raises
    :class:`CheckpointError` (one line naming the file). Stable public API."""
    verify(path, verify_level or SETTINGS['verify'])
    return safe_load(path, map_location, SETTINGS['trusted_globals'] if trusted is None else trusted)


__all__ = ['DAMAGED_SUFFIX', 'FORMAT', 'MANIFEST_SUFFIX', 'SAFE_GLOBALS', 'SETTINGS', 'TMP_PREFIX', 'CheckpointError',
           'files_of', 'load_checkpoint', 'manifest_path', 'mark_verified', 'read_manifest', 'safe_load', 'sha256_file',
           'verify']
