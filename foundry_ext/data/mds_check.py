"""Is an MDS dataset whole? Checked before the build, one line naming the dataset and the file.

streaming's ``index.json`` (version 2) lists each shard's file (``raw_data``; ``zip_data`` when
compressed) with its size in bytes and, when the writer was asked for them, its hashes. For a
dataset read from a local folder every shard must be there with that size (a compressed shard may
be present as either file); in the local cache of a remote, a shard that is not downloaded yet is
fine but one that is present must have its size. Hashes are verified when the index has them
(the fastest stored algorithm; on local rank 0 only; results are remembered per file size and
mtime in ``~/.cache/foundry_ext/verified_shards.json``, so only changed files are hashed again;
``FOUNDRY_EXT_VERIFY_HASHES=0`` turns hashing off). No torch, no streaming import.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from foundry_ext.errors import UserError

# fastest first: the one used when a shard has several
HASH_PREFERENCE = ('xxh3_64', 'xxh64', 'xxh3_128', 'xxh128', 'xxh32', 'blake2b', 'sha1', 'md5', 'sha256', 'blake2s',
                   'sha224', 'sha384', 'sha512', 'sha3_224', 'sha3_256', 'sha3_384', 'sha3_512')
_BLOCK = 1 << 22


@dataclass(frozen=True)
class ShardFile:
    basename: str
    bytes: int
    hashes: dict


@dataclass(frozen=True)
class MDSIndex:
    """A parsed, checked ``index.json``."""
    folder: Path
    raw: bytes                                    # the index file's bytes (the dataset's identity)
    shards: tuple[tuple[ShardFile, Optional[ShardFile]], ...]   # (raw, zip) per shard
    samples: tuple[int, ...]

    @property
    def total_samples(self) -> int:
        return sum(self.samples)


def _fail(name: str, msg: str) -> UserError:
    return UserError(f'{name}: {msg}')


def _file_info(d: Any, what: str) -> ShardFile:
    if not isinstance(d, dict) or not isinstance(d.get('basename'), str) or not isinstance(d.get('bytes'), int):
        raise ValueError(f'{what} has no basename/bytes')
    base = d['basename']
    if os.path.isabs(base) or '..' in Path(base).parts:
        raise ValueError(f'{what} names a file outside the dataset folder ({base!r})')
    return ShardFile(base, int(d['bytes']), dict(d.get('hashes') or {}))


def parse_index(folder: str | os.PathLike, name: str = 'dataset') -> MDSIndex:
    """``folder/index.json`` -> :class:`MDSIndex`; a missing, unreadable or malformed index is one line."""
    folder = Path(folder)
    path = folder / 'index.json'
    if not path.is_file():
        raise _fail(name, f'{path} does not exist; is this an MDS folder (and the split right)? '
                          'convert data into it with data_prep/convert_text_to_mds.py')
    try:
        raw = path.read_bytes()
        obj = json.loads(raw)
    except OSError as e:
        raise _fail(name, f'{path} cannot be read ({e.strerror})') from None
    except (ValueError, UnicodeDecodeError) as e:
        why = 'is empty' if not raw.strip() else f'is not valid JSON (truncated or corrupt: {e})'
        raise _fail(name, f'{path} {why}; re-convert the dataset or restore the file') from None
    try:
        if not isinstance(obj, dict) or obj.get('version') != 2 or not isinstance(obj.get('shards'), list):
            raise ValueError('not a streaming version-2 index (no "version": 2 / "shards")')
        shards, samples = [], []
        for i, s in enumerate(obj['shards']):
            if not isinstance(s, dict):
                raise ValueError(f'shard {i} is not a mapping')
            if s.get('format') not in ('mds', 'json', 'csv', 'tsv', 'xsv'):
                raise ValueError(f"shard {i} has unknown format {s.get('format')!r}")
            if not isinstance(s.get('samples'), int) or s['samples'] < 0:
                raise ValueError(f'shard {i} has no sample count')
            rd = _file_info(s.get('raw_data'), f'shard {i} raw_data')
            zd = _file_info(s['zip_data'], f'shard {i} zip_data') if s.get('zip_data') else None
            shards.append((rd, zd))
            samples.append(int(s['samples']))
    except ValueError as e:
        raise _fail(name, f'{path} is not a valid MDS index: {e}; re-convert the dataset') from None
    return MDSIndex(folder, raw, tuple(shards), tuple(samples))


# ------------------------------------------------------------------------------ hashes


def hash_file(path: Path, algo: str) -> str:
    if algo.startswith('xxh'):
        import xxhash
        h: Any = getattr(xxhash, algo)()
    else:
        h = hashlib.new(algo)
    with open(path, 'rb') as f:
        while True:
            blk = f.read(_BLOCK)
            if not blk:
                break
            h.update(blk)
    return h.hexdigest()


def _pick(hashes: dict) -> Optional[str]:
    for algo in HASH_PREFERENCE:
        if algo in hashes:
            return algo
    return None


class _Verified:
    """Remembered good hashes: (realpath, size, mtime_ns, algo, digest) -> ok."""

    def __init__(self, path: Optional[Path]):
        self.path = path
        self.seen: dict[str, bool] = {}
        self.dirty = False
        if path is not None and path.is_file():
            try:
                self.seen = dict(json.loads(path.read_text()))
            except (ValueError, OSError):
                self.seen = {}

    @staticmethod
    def key(p: Path, algo: str, digest: str) -> str:
        st = p.stat()
        return f'{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|{algo}|{digest}'

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f'{self.path.name}.{os.getpid()}.tmp')
            tmp.write_text(json.dumps(self.seen))
            os.replace(tmp, self.path)
        except OSError:
            pass   # a cache: hashing again next time is the only cost


def verified_cache() -> Optional[Path]:
    root = os.environ.get('FOUNDRY_EXT_CACHE') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'foundry_ext')
    return Path(root) / 'verified_shards.json'


def hashing_enabled() -> bool:
    if os.environ.get('FOUNDRY_EXT_VERIFY_HASHES', '1').lower() in ('0', 'false', 'no', 'off'):
        return False
    return int(os.environ.get('LOCAL_RANK', '0')) == 0


# ------------------------------------------------------------------------------ the check


def check_mds(folder: str | os.PathLike, name: str = 'dataset', *, complete: bool = True,
              hashes: Optional[bool] = None) -> MDSIndex:
    """Check an MDS folder: its index parses and every shard it names is there with its size
    (``complete=False``: the local cache of a remote, where absent shards are downloaded later)
    and, when the index stores hashes, with its hash. Raises one-line :class:`UserError`s that
    name ``name`` and the file; returns the parsed index."""
    idx = parse_index(folder, name)
    if complete and idx.total_samples == 0:
        raise _fail(name, f'{idx.folder} holds 0 samples; convert data into it or remove it from the config')
    verify = hashing_enabled() if hashes is None else hashes
    cache = _Verified(verified_cache()) if verify else None
    try:
        for i, (rd, zd) in enumerate(idx.shards):
            present = [f for f in (rd, zd) if f is not None and (idx.folder / f.basename).is_file()]
            if not present:
                if complete:
                    names = rd.basename + (f' (or {zd.basename})' if zd else '')
                    raise _fail(name, f'shard {idx.folder / names} is missing (shard {i} of {len(idx.shards)} in '
                                      'index.json); restore it or re-convert the dataset')
                continue
            for f in present:
                path = idx.folder / f.basename
                size = path.stat().st_size
                if size != f.bytes:
                    what = 'truncated' if size < f.bytes else 'larger than written'
                    fix = ('delete it and it is downloaded again' if not complete
                           else 'restore it or re-convert the dataset')
                    raise _fail(name, f'shard {path} is {size} bytes but index.json says {f.bytes} ({what}); {fix}')
                algo = _pick(f.hashes) if cache is not None else None
                if algo is None or cache is None:
                    continue
                key = _Verified.key(path, algo, str(f.hashes[algo]))
                if cache.seen.get(key):
                    continue
                if hash_file(path, algo) != f.hashes[algo]:
                    raise _fail(name, f'shard {path} does not match its {algo} hash in index.json (corrupt); '
                                      'restore it or re-convert the dataset')
                cache.seen[key] = True
                cache.dirty = True
    finally:
        if cache is not None:
            cache.save()
    return idx


def fingerprint(indexes: dict[str, bytes]) -> str:
    """One digest of several datasets' ``index.json`` bytes, keyed by their names (sha256 hex)."""
    h = hashlib.sha256()
    for key in sorted(indexes):
        h.update(key.encode())
        h.update(b'\0')
        h.update(hashlib.sha256(indexes[key]).digest())
    return h.hexdigest()


def check_stream(local: Optional[str], remote: Optional[str], split: Optional[str], name: str) -> Optional[MDSIndex]:
    """One stream as streaming will read it (``local`` / ``remote`` / ``split``): a local dataset or
    a local-folder remote must be whole; a URL remote has its index fetched into ``local`` (an
    unreachable remote or refused credentials is one line) and the cached shards are checked.
    Returns the index (None when there is no local cache to fetch it into)."""
    from foundry_ext.data.remote import fetch_index, local_folder
    sub = split or ''
    if not remote:
        if local is None:
            raise _fail(name, 'neither local nor remote is set')
        return check_mds(Path(local) / sub, name)
    src = local_folder(remote)
    if src is not None:
        idx = check_mds(src / sub, name)
        cached = Path(local) / sub / 'index.json' if local else None
        if cached is not None and cached.is_file() and cached.read_bytes() != idx.raw:
            raise _fail(name, f'the local cache {cached.parent} holds another version of the dataset than remote '
                              f'{src / sub}; delete the cache folder (it is filled again)')
        if cached is not None and cached.is_file():
            check_mds(cached.parent, name, complete=False)
        return idx
    if local is None:
        return None
    fetch_index(remote, split, local, name)
    return check_mds(Path(local) / sub, name, complete=False)
