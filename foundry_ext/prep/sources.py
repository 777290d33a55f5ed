"""Streaming readers: any text source -> a stream of small ``Chunk`` work units.

The main process only slices input into chunks of about ``block_bytes`` (raw jsonl lines,
whole text files, or parquet / Hugging Face record batches); decoding, JSON parsing, filters
and tokenization happen in the workers. Memory stays bounded by the chunk size times the
number of chunks in flight, whatever the input size:

- text files (``.txt .md .py ...``, ``.gz``/``.zst`` transparently): small files are grouped
  into one chunk; a file larger than ``max_doc_bytes`` is streamed in pieces cut just before
  a single space between two words (so a byte-level BPE tokenizer gives the same tokens as
  for the whole file), and only the last piece gets the EOS.
- jsonl (``.jsonl``, ``.json``, ``.gz``/``.zst``): read in blocks of whole lines; a line is
  held whole only when it is parsed.
- parquet: ``pyarrow`` record batches of the text (and domain) column only.
- Hugging Face datasets: ``load_from_disk`` folders, local data files, or (online) the hub,
  as Arrow batches or in streaming mode.
"""
from __future__ import annotations

import glob
import gzip
import io
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Optional

from foundry_ext.errors import UserError

TEXT_SUFFIXES = {'.txt', '.md', '.py', '.rst', '.json', '.csv', '.html', '.tex', '.c', '.h', '.js'}
JSONL_SUFFIXES = {'.jsonl', '.ndjson'}
COMPRESSED = {'.gz', '.zst', '.zstd'}
_DOMAIN_OK = re.compile(r'[^A-Za-z0-9._-]+')
_SAFE_CUT = re.compile(rb'(?<=[^\s]) (?=[^\s])')


@dataclass
class Source:
    """One input: ``kind`` in text | jsonl | parquet | records; output (domain, split)."""
    kind: str
    split: str
    domain: str
    paths: list[Path] = field(default_factory=list)
    records: Any = None          # kind 'records': a callable returning an iterator of (texts, domains)
    label: str = ''              # shown in messages for 'records'


@dataclass
class Chunk:
    kind: str                    # jsonl | texts | records
    source: str                  # file shown in messages
    split: str
    domain: str                  # default domain for its documents
    first: int                   # jsonl: first line number (1-based); records: first row (0-based)
    payload: Any                 # jsonl: bytes; texts: [(name, bytes, cont, last)]; records: (texts, domains)
    nbytes: int = 0


def domain_name(value: Any) -> str:
    """A domain value from the data -> a safe folder name."""
    name = _DOMAIN_OK.sub('_', str(value)).strip('._') or 'unknown'
    return name[:100]


def _base_suffix(p: Path) -> str:
    s = p.suffixes
    if s and s[-1] in COMPRESSED:
        return s[-2] if len(s) > 1 else ''
    return p.suffix


def is_text_file(p: Path) -> bool:
    return p.is_file() and _base_suffix(p) in TEXT_SUFFIXES and not p.name.startswith('.')


def is_jsonl_file(p: Path) -> bool:
    return p.is_file() and _base_suffix(p) in JSONL_SUFFIXES and not p.name.startswith('.')


def open_bytes(path: Path):
    """A binary stream over ``path``, decompressing .gz / .zst on the fly. A damaged or truncated
    input (or a read error) is a one-line UserError naming the file and how far it got."""
    path = Path(path)
    try:
        return _Checked(_open_raw(path), path)
    except FileNotFoundError:
        raise UserError(f'input {path} does not exist') from None
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - each decompressor raises its own types
        raise UserError(f'input {path} cannot be read: {_why(e)}') from None


def _open_raw(path: Path):
    suffix = path.suffix
    if suffix == '.gz':
        return gzip.open(path, 'rb')
    if suffix in ('.zst', '.zstd'):
        try:
            import zstandard
            return zstandard.ZstdDecompressor().stream_reader(open(path, 'rb'), closefd=True)
        except ImportError:
            pass
        exe = shutil.which('zstd')
        if exe:
            return _ProcReader([exe, '-dc', '--', str(path)])
        import zstd  # one-shot only: the file is decompressed whole
        return io.BytesIO(zstd.decompress(path.read_bytes()))
    return open(path, 'rb')


def _why(e: BaseException) -> str:
    if isinstance(e, EOFError):
        return 'it is truncated (the compressed stream ends early)'
    if isinstance(e, gzip.BadGzipFile):
        return 'it is not a gzip file'
    msg = ' '.join(str(e).split())[:160]
    return f'{type(e).__name__}: {msg}' if msg else type(e).__name__


_PIECE = 1 << 16


class _Checked:
    """A binary reader that turns a decompressor's or the OS's error into one line naming the file,
    the uncompressed byte offset and the line it had reached."""

    def __init__(self, f, path: Path):
        self.f, self.path = f, path
        self.offset = 0
        self.lines = 0

    def _fail(self, e: BaseException) -> UserError:
        where = f' after {self.offset:,} bytes (line {self.lines + 1})' if self.offset else ''
        fix = '; re-download or re-compress it' if self.path.suffix in COMPRESSED else ''
        return UserError(f'input {self.path} is damaged{where}: {_why(e)}{fix}')

    def _count(self, data: bytes) -> bytes:
        self.offset += len(data)
        self.lines += data.count(b'\n')
        return data

    def read(self, n: int = -1) -> bytes:
        """Read in pieces of 64 KiB so a failure knows how far the input got."""
        parts = []
        want = n if n is not None and n >= 0 else None
        try:
            while want is None or want > 0:
                blk = self.f.read(_PIECE if want is None else min(want, _PIECE))
                if not blk:
                    break
                parts.append(self._count(blk))
                if want is not None:
                    want -= len(blk)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - EOFError, BadGzipFile, zlib.error, ZstdError, OSError
            raise self._fail(e) from None
        return b''.join(parts)

    def readline(self, n: int = -1) -> bytes:
        try:
            return self._count(self.f.readline(n))
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._fail(e) from None

    def __iter__(self):
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def close(self) -> None:
        try:
            self.f.close()
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._fail(e) from None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            try:
                self.f.close()
            except Exception:  # noqa: BLE001, S110 - already failing: the first error is the one to show
                pass


class _ProcReader(io.RawIOBase):
    """stdout of a decompressor process as a readable binary stream."""

    def __init__(self, cmd: list[str]):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stderr is not None   # both are PIPEs
        self._stdout: IO[bytes] = self.proc.stdout
        self._stderr: IO[bytes] = self.proc.stderr
        self.cmd = cmd

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._stdout.read(len(b))
        b[:len(data)] = data
        return len(data)

    def read(self, n: int | None = -1) -> bytes:
        return self._stdout.read() if n is None or n < 0 else self._stdout.read(n)

    def close(self) -> None:
        if not self.closed:
            self._stdout.close()
            err = self._stderr.read().decode(errors='replace').strip()
            self._stderr.close()
            rc = self.proc.wait()
            super().close()
            if rc != 0:
                raise UserError(f'{self.cmd[-1]} could not be decompressed: {err.splitlines()[-1] if err else rc}')


def safe_cut(data: bytes, limit: int) -> int:
    """Where to cut ``data[:limit]`` so both halves tokenize as the whole does: just before a
    single space between two non-space characters; else at a UTF-8 character boundary."""
    if len(data) <= limit:
        return len(data)
    window = data[max(0, limit - (1 << 16)):limit]
    last = None
    for m in _SAFE_CUT.finditer(window):
        last = m   # the last safe cut before the limit
    if last is not None:
        return max(0, limit - (1 << 16)) + last.start()
    cut = limit
    while cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut or limit


def expand_inputs(specs: list[str], want) -> list[Path]:
    """Files named by paths, folders (searched recursively) or globs, deterministic order."""
    out: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            out.extend(sorted((q for q in p.rglob('*') if want(q)), key=lambda q: q.as_posix()))
        elif p.is_file():
            out.append(p)
        else:
            hits = sorted(Path(h) for h in glob.glob(spec, recursive=True))
            files = [h for h in hits if h.is_file()]
            for h in hits:
                if h.is_dir():
                    files.extend(sorted((q for q in h.rglob('*') if want(q)), key=lambda q: q.as_posix()))
            if not files:
                raise UserError(f'input {spec} matches no file; give a file, a folder or a glob '
                                "(quote globs: --input 'data/*.jsonl')")
            out.extend(files)
    seen, uniq = set(), []
    for f in out:
        if f not in seen:
            seen.add(f)
            uniq.append(f)
    return uniq


# ------------------------------------------------------------------------------ chunkers


def text_file_chunks(src: Source, block_bytes: int, max_doc_bytes: int) -> Iterator[Chunk]:
    batch: list[tuple[str, bytes, bool, bool]] = []   # (name, bytes, continues, last); named by its first
    size = 0
    for path in src.paths:
        with open_bytes(path) as f:
            plain = path.suffix not in COMPRESSED
            data = f.read() if plain and path.stat().st_size <= max_doc_bytes else f.read(max_doc_bytes + 1)
            if len(data) <= max_doc_bytes:
                batch.append((str(path), data, False, True))
                size += len(data)
                if size >= block_bytes:
                    yield Chunk('texts', batch[0][0], src.split, src.domain, 0, batch, size)
                    batch, size = [], 0
                continue
            if batch:
                yield Chunk('texts', batch[0][0], src.split, src.domain, 0, batch, size)
                batch, size = [], 0
            cont = False
            while True:
                more = f.read(max_doc_bytes + 1 - len(data)) if len(data) <= max_doc_bytes else b''
                data += more
                if len(data) <= max_doc_bytes:  # end of file
                    yield Chunk('texts', str(path), src.split, src.domain, 0,
                                [(str(path), data, cont, True)], len(data))
                    break
                cut = safe_cut(data, max_doc_bytes)
                yield Chunk('texts', str(path), src.split, src.domain, 0,
                            [(str(path), data[:cut], cont, False)], cut)
                data = data[cut:]
                cont = True
    if batch:
        yield Chunk('texts', batch[0][0], src.split, src.domain, 0, batch, size)


def jsonl_chunks(src: Source, block_bytes: int) -> Iterator[Chunk]:
    for path in src.paths:
        lineno = 1
        carry = b''
        with open_bytes(path) as f:
            while True:
                blk = f.read(block_bytes)
                if not blk:
                    break
                data = carry + blk if carry else blk
                cut = data.rfind(b'\n')
                if cut < 0:
                    carry = data
                    continue
                lines, carry = data[:cut + 1], data[cut + 1:]
                yield Chunk('jsonl', str(path), src.split, src.domain, lineno, lines, len(lines))
                lineno += lines.count(b'\n')
        if carry:
            yield Chunk('jsonl', str(path), src.split, src.domain, lineno, carry, len(carry))


def parquet_chunks(src: Source, text_field: str, domain_field: Optional[str],
                   batch_rows: int) -> Iterator[Chunk]:
    import pyarrow.parquet as pq
    for path in src.paths:
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise UserError(f'{path} is not a readable parquet file ({type(e).__name__}: {e})') from None
        names = pf.schema_arrow.names
        if text_field not in names:
            raise UserError(f'{path} has no column {text_field!r} (columns: {names}); pick one with --text_field')
        cols = [text_field] + ([domain_field] if domain_field and domain_field in names else [])
        row = 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
            texts = batch.column(0).to_pylist()
            doms = batch.column(1).to_pylist() if len(cols) > 1 else None
            nbytes = batch.nbytes
            yield Chunk('records', str(path), src.split, src.domain, row, (texts, doms), nbytes)
            row += len(texts)


def records_chunks(src: Source) -> Iterator[Chunk]:
    row = 0
    for texts, doms in src.records():
        nbytes = sum(len(t) for t in texts if isinstance(t, str))
        yield Chunk('records', src.label, src.split, src.domain, row, (texts, doms), nbytes)
        row += len(texts)


def iter_chunks(sources: list[Source], text_field: str = 'text', domain_field: Optional[str] = None,
                block_bytes: int = 1 << 20, max_doc_bytes: int = 1 << 23) -> Iterator[Chunk]:
    for src in sources:
        if src.kind == 'text':
            yield from text_file_chunks(src, block_bytes, max_doc_bytes)
        elif src.kind == 'jsonl':
            yield from jsonl_chunks(src, block_bytes)
        elif src.kind == 'parquet':
            yield from parquet_chunks(src, text_field, domain_field, max(64, block_bytes // 2048))
        elif src.kind == 'records':
            yield from records_chunks(src)
        else:
            raise ValueError(f'unknown source kind {src.kind}')


def total_bytes(sources: list[Source]) -> Optional[int]:
    """Input size on disk (for the progress bar), None when unknown."""
    n = 0
    for s in sources:
        if s.kind == 'records':
            return None
        for p in s.paths:
            if p.suffix in COMPRESSED:
                return None
            try:
                n += p.stat().st_size
            except OSError:
                return None
    return n


# ------------------------------------------------------------------------------ Hugging Face


def hf_sources(path_or_name: str, split: Optional[str], text_field: str, domain: str,
               domain_field: Optional[str] = None, streaming: bool = False, batch_rows: int = 1000,
               name: Optional[str] = None, data_files: Optional[list[str]] = None,
               ) -> list[Source]:
    """Sources for a Hugging Face dataset: a ``save_to_disk`` folder, local data files
    (json/jsonl/parquet/csv/txt, via ``load_dataset(<builder>, data_files=...)``), or a hub
    name when online. Each dataset split becomes an output split (``--split`` picks one)."""
    import os
    p = Path(path_or_name)
    cols = [text_field] + ([domain_field] if domain_field else [])

    def from_arrow_dataset(ds, label: str):
        if text_field not in ds.column_names:
            raise UserError(f'{label} has no column {text_field!r} (columns: {ds.column_names}); '
                            'pick one with --text_field')
        keep = [c for c in cols if c in ds.column_names]

        def gen():
            table = ds.data.table if hasattr(ds.data, 'table') else ds.data
            if ds._indices is not None:  # a filtered/shuffled view: go through datasets
                for b in ds.select_columns(keep).iter(batch_size=batch_rows):
                    yield b[text_field], (b[domain_field] if domain_field in keep else None)
                return
            for rb in table.select(keep).to_batches(max_chunksize=batch_rows):
                d = rb.to_pydict()
                yield d[text_field], (d[domain_field] if domain_field in keep else None)
        return gen

    def from_iterable(ds, label: str):
        def gen():
            texts, doms = [], []
            for ex in ds:
                if text_field not in ex:
                    raise UserError(f'{label} has no field {text_field!r} (fields: {sorted(ex)}); '
                                    'pick one with --text_field')
                texts.append(ex[text_field])
                doms.append(ex.get(domain_field) if domain_field else None)
                if len(texts) >= batch_rows:
                    yield texts, (doms if domain_field else None)
                    texts, doms = [], []
            if texts:
                yield texts, (doms if domain_field else None)
        return gen

    import datasets
    datasets.disable_progress_bars()
    if p.is_dir() and ((p / 'dataset_info.json').is_file() or (p / 'dataset_dict.json').is_file()):
        obj = datasets.load_from_disk(str(p))
        kind = 'disk'
    elif data_files or p.exists():
        files = data_files or [str(p)]
        ext = Path(files[0]).suffixes
        ext = [e for e in ext if e not in COMPRESSED]
        builder = {'.jsonl': 'json', '.json': 'json', '.parquet': 'parquet', '.csv': 'csv',
                   '.txt': 'text'}.get(ext[-1] if ext else '', None)
        if builder is None:
            raise UserError(f'{path_or_name}: cannot tell the file type; give .jsonl/.json/.parquet/.csv/.txt files')
        obj = datasets.load_dataset(builder, data_files={split or 'train': files}, streaming=streaming)
        kind = 'files'
    else:
        if os.environ.get('HF_HUB_OFFLINE') == '1' or os.environ.get('HF_DATASETS_OFFLINE') == '1':
            raise UserError(f'{path_or_name} is not a local folder or file, and the hub is offline '
                            '(HF_HUB_OFFLINE=1); save the dataset with save_to_disk and pass that folder')
        obj = datasets.load_dataset(path_or_name, name, streaming=streaming)
        kind = 'hub'
    if isinstance(obj, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        splits = [split] if split else list(obj.keys())
        missing = [s for s in splits if s not in obj]
        if missing:
            raise UserError(f'{path_or_name} has no split {missing[0]!r}; it has {list(obj.keys())}')
        parts = [(s, obj[s]) for s in splits]
    else:
        parts = [(split or 'train', obj)]
    out = []
    for s, ds in parts:
        label = f'{path_or_name}[{s}]'
        gen = from_arrow_dataset(ds, label) if isinstance(ds, datasets.Dataset) else from_iterable(ds, label)
        out.append(Source('records', s, domain, records=gen, label=label))
    del kind
    return out
