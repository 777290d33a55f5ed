"""A fast MDS writer for fixed-length token rows, without importing ``streaming``.

It writes exactly the bytes ``streaming.MDSWriter(columns={'tokens': 'ndarray:<dtype>'})``
writes for the same rows, one shard at a time built with numpy instead of one
``writer.write()`` call (and one Python object) per row, so a shard of 250k rows costs a few
milliseconds. ``tests/test_data_prep.py`` checks the byte identity against ``MDSWriter``.

Importing ``streaming`` pulls in transformers and torchvision (seconds to tens of seconds on
a small machine); this module needs only numpy, hashlib/xxhash and the compressor.
Differences, on purpose: ``gz`` shards are written with a zero mtime (streaming stamps the
current time, which would make two runs differ); ``br``/``snappy`` fall back to streaming's
own compressor.
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from foundry_ext.errors import UserError

_VALUE_DTYPES = {'uint8': 8, 'int8': 9, 'uint16': 16, 'int16': 17, 'float16': 18, 'uint32': 32,
                 'int32': 33, 'float32': 34, 'uint64': 64, 'int64': 65, 'float64': 66}
_SHAPE_DTYPES = ('uint8', 'uint16', 'uint32', 'uint64')
_DEFAULT_LEVEL = {'zstd': 3, 'gz': 9, 'bz2': 9, 'br': 11}
_LEVELS = {'zstd': range(1, 23), 'gz': range(10), 'bz2': range(1, 10), 'br': range(12)}


def parse_compression(compression: Optional[str]) -> tuple[Optional[str], Optional[int]]:
    """'zstd' / 'zstd:7' / None -> (family, level); UserError for anything streaming can't read."""
    if not compression:
        return None, None
    family, _, level = compression.partition(':')
    if family not in ('zstd', 'gz', 'bz2', 'br', 'snappy'):
        raise UserError(f'--compression {compression!r} is not one MDS reads; use zstd, gz, bz2, br '
                        'or snappy (optionally with :level, e.g. zstd:7), or leave it out')
    if family == 'snappy':
        if level:
            raise UserError('--compression snappy takes no level')
        return family, None
    lvl = _DEFAULT_LEVEL[family] if not level else int(level) if level.isdigit() else -1
    if lvl not in _LEVELS[family]:
        raise UserError(f'--compression {compression!r}: level must be in '
                        f'{_LEVELS[family].start}..{_LEVELS[family].stop - 1}')
    return family, lvl


def compress(family: Optional[str], level: Optional[int], data: bytes) -> bytes:
    if family is None:
        return data
    lvl = level if level is not None else _DEFAULT_LEVEL.get(family, 0)   # as parse_compression
    if family == 'zstd':
        import zstd  # the module streaming itself uses, so the bytes are the same
        return zstd.compress(data, lvl)
    if family == 'gz':
        return gzip.compress(data, lvl, mtime=0)
    if family == 'bz2':
        return bz2.compress(data, lvl)
    from streaming.base.compression import compress as s_compress  # br, snappy: rare
    return s_compress(family if level is None else f'{family}:{level}', data)


def _hash(algo: str, data: bytes) -> str:
    if hasattr(hashlib, algo) and not algo.startswith('shake_'):
        return getattr(hashlib, algo)(data).hexdigest()
    import xxhash
    if algo in xxhash.algorithms_available:
        return getattr(xxhash, algo)(data).hexdigest()
    raise UserError(f'--hashes: unknown hash {algo!r}; use e.g. sha1, md5, xxh64, xxh3_64')


def check_hashes(hashes: Optional[list[str]]) -> list[str]:
    hashes = list(hashes or [])
    for h in hashes:
        _hash(h, b'')
    return sorted(hashes)


class TokenMDSWriter:
    """Writes rows of ``row_len`` tokens as MDS column ``tokens`` (``ndarray:<dtype>``).

    ``write_rows(rows)`` takes a 2-D array; ``finish()`` flushes and writes ``index.json``.
    """

    column = 'tokens'

    def __init__(self, out: str | Path, dtype: Any, row_len: int, compression: Optional[str] = None,
                 hashes: Optional[list[str]] = None, size_limit: int = 1 << 26):
        self.out = Path(out)
        self.dtype = np.dtype(dtype)
        if self.dtype.name not in _VALUE_DTYPES:
            raise ValueError(f'unsupported token dtype {self.dtype}')
        self.row_len = int(row_len)
        self.compression = compression or None
        self.family, self.level = parse_compression(self.compression)
        self.hashes = check_hashes(hashes)
        self.size_limit = int(size_limit) if size_limit else None
        config = {'version': 2, 'format': 'mds', 'compression': self.compression, 'hashes': self.hashes,
                  'size_limit': self.size_limit, 'column_names': [self.column],
                  'column_encodings': [f'ndarray:{self.dtype.name}'], 'column_sizes': [None]}
        self.config = config
        self.config_data = json.dumps(config, sort_keys=True).encode('utf-8')
        # One sample: [uint32 column size][ndim<<2 | shape dtype][shape][values].
        shape_dtype = next(d for i, d in enumerate(_SHAPE_DTYPES) if self.row_len < (1 << (8 << i)))
        datum_head = bytes([(1 << 2) | _SHAPE_DTYPES.index(shape_dtype)]) + \
            np.array([self.row_len], shape_dtype).tobytes()
        datum_len = len(datum_head) + self.row_len * self.dtype.itemsize
        self.head = np.frombuffer(np.array([datum_len], np.uint32).tobytes() + datum_head, np.uint8)
        self.sample_bytes = len(self.head) + self.row_len * self.dtype.itemsize
        extra_per_shard = 4 + 4 + len(self.config_data)
        self.rows_per_shard: Optional[int]      # None: no size limit
        if self.size_limit:
            self.rows_per_shard = (self.size_limit - extra_per_shard) // (self.sample_bytes + 4)
            if self.rows_per_shard < 1:
                raise UserError(f'shard size limit {self.size_limit} bytes is smaller than one sample '
                                f'({self.sample_bytes} bytes); raise it')
        else:
            self.rows_per_shard = None
        self.out.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict] = []
        self._pending: list[np.ndarray] = []
        self._n_pending = 0
        self.rows = 0

    def write_rows(self, rows: np.ndarray) -> None:
        if rows.ndim != 2 or rows.shape[1] != self.row_len or rows.dtype != self.dtype:
            raise ValueError(f'expected rows of shape (n, {self.row_len}) {self.dtype}, got '
                             f'{rows.shape} {rows.dtype}')
        self.rows += len(rows)
        while len(rows):
            room = len(rows) if self.rows_per_shard is None else self.rows_per_shard - self._n_pending
            take = rows[:room]
            self._pending.append(take)
            self._n_pending += len(take)
            rows = rows[room:]
            if self.rows_per_shard is not None and self._n_pending == self.rows_per_shard:
                self._flush()

    def _flush(self) -> None:
        if not self._n_pending:
            return
        rows = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        n = len(rows)
        body = np.empty((n, self.sample_bytes), np.uint8)
        body[:, :len(self.head)] = self.head
        body[:, len(self.head):] = np.ascontiguousarray(rows).view(np.uint8).reshape(n, -1)
        start = 4 + 4 * (n + 1) + len(self.config_data)
        offsets = (start + self.sample_bytes * np.arange(n + 1, dtype=np.int64)).astype(np.uint32)
        if start + self.sample_bytes * n >= 2**32:
            raise UserError('one MDS shard would exceed 4 GiB; lower the shard size limit')
        raw = b''.join((np.uint32(n).tobytes(), offsets.tobytes(), self.config_data, body.tobytes()))
        idx = len(self.shards)
        raw_name = f'shard.{idx:05}.mds'
        raw_info = {'basename': raw_name, 'bytes': len(raw), 'hashes': {h: _hash(h, raw) for h in self.hashes}}
        if self.family:
            zname = f'{raw_name}.{self.family}'
            data = compress(self.family, self.level, raw)
            zip_info = {'basename': zname, 'bytes': len(data), 'hashes': {h: _hash(h, data) for h in self.hashes}}
            fname = zname
        else:
            data, zip_info, fname = raw, None, raw_name
        (self.out / fname).write_bytes(data)
        shard = {'samples': n, 'raw_data': raw_info, 'zip_data': zip_info}
        shard.update(self.config)
        self.shards.append(shard)
        self._pending, self._n_pending = [], 0

    def finish(self) -> None:
        self._flush()
        with open(self.out / 'index.json', 'w') as f:
            json.dump({'version': 2, 'shards': self.shards}, f, sort_keys=True)

    def __enter__(self) -> TokenMDSWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else uint32: both read by LLM Foundry's
    ``text`` loader (it casts to int64)."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)
