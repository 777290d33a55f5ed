"""The local cache of the mixture loader's remote streams: locked downloads and ``cache_limit``.

Shards of a stream with a ``remote`` are downloaded on first use with streaming's
``Stream.prepare_shard`` (which writes a temporary file and renames it, so a kill mid-download
leaves no partial shard). Here each download holds a per-shard ``flock`` so DataLoader workers and
ranks on one machine never download the same shard into the same temporary name, and, with
``cache_limit``, the least recently opened shards of the remote streams are deleted before a new
one is fetched so the cache stays under the limit (they are downloaded again when needed; an open
shard stays readable after its file is deleted). Usage is read from the cache folders themselves,
so every worker process sees the same number.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Any, Iterator, Optional

from foundry_ext.errors import UserError


@contextlib.contextmanager
def shard_lock(folder: str, basename: str) -> Iterator[None]:
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, f'.{basename}.lock'), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def shard_files(shard: Any) -> list[tuple[str, int]]:
    """(basename, bytes) of a shard's raw and compressed files."""
    out = []
    for raw, zipped in shard.file_pairs:
        out.append((raw.basename, int(raw.bytes)))
        if zipped is not None:
            out.append((zipped.basename, int(zipped.bytes)))
    return out


class ShardCache:
    """Usage and LRU eviction over the cache folders of the remote streams of one mixture."""

    def __init__(self, limit: Optional[int]):
        self.limit = limit
        self.folders: list[tuple[str, list[Any]]] = []     # (cache folder, shard readers) per remote stream

    def add(self, folder: str, shards: list[Any]) -> None:
        self.folders.append((folder, shards))
        if self.limit is not None:
            biggest = max((sum(b for _, b in shard_files(s)) for s in shards), default=0)
            if 2 * biggest > self.limit:
                raise UserError(f'cache_limit ({self.limit:,} bytes) must hold at least two of the largest shard '
                                f'({biggest:,} bytes) of {folder}; raise cache_limit')

    def _present(self) -> list[tuple[float, int, list[str]]]:
        """(last opened, bytes, paths) of every shard present in the cache."""
        out = []
        for folder, shards in self.folders:
            for s in shards:
                paths, size, newest = [], 0, 0.0
                for base, _ in shard_files(s):
                    p = os.path.join(folder, base)
                    try:
                        st = os.stat(p)
                    except FileNotFoundError:
                        continue
                    paths.append(p)
                    size += st.st_size
                    newest = max(newest, st.st_mtime)
                if paths:
                    out.append((newest, size, paths))
        return out

    def usage(self) -> int:
        return sum(size for _, size, _ in self._present())

    def make_room(self, need: int, keep: tuple[str, ...] = ()) -> int:
        """Evict least recently opened shards until ``need`` more bytes fit; bytes evicted."""
        if self.limit is None:
            return 0
        present = sorted(self._present())
        used = sum(size for _, size, _ in present)
        freed = 0
        for _, size, paths in present:
            if used - freed + need <= self.limit:
                break
            if any(p in keep for p in paths):
                continue
            for p in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(p)
            freed += size
        return freed


def touch(path: str) -> None:
    """Mark a shard as just used (its mtime orders eviction)."""
    with contextlib.suppress(OSError):
        os.utime(path)
