"""The embedded default corpus: multi-domain text built offline from what every machine has.

Domains (each a separate folder, so mixers and evals can address them):

- ``code``: the Python standard library's ``.py`` sources (PSF licence).
- ``prose``: English from installed distributions' long descriptions (their READMEs) and
  the standard library's docstrings. Each text keeps its own package's licence; the corpus
  is built locally for training and is never committed or redistributed.
- ``arithmetic``: procedurally generated worked sums, differences and products.
- ``records``: procedurally generated structured records whose fields depend on each
  other (e-mail from name, age from birth year), so a model can learn the structure.

Same (seed, size, mix, Python environment) -> byte-identical output. ``code`` and ``prose``
depend on the interpreter and installed packages; inside the project's locked ``.venv``
they are the same on every machine.
"""
from __future__ import annotations

import ast
import email.message
import hashlib
import json
import random
import sys
import sysconfig
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator, cast

from foundry_ext.atomic import atomic_dir
from foundry_ext.errors import UserError

DOMAINS = ('code', 'prose', 'arithmetic', 'records')
DEFAULT_MIX = {'code': 0.4, 'prose': 0.3, 'arithmetic': 0.15, 'records': 0.15}
SPLITS = ('train', 'val')


@dataclass(frozen=True)
class Doc:
    id: str
    text: str


# ---------------------------------------------------------------- sources (deterministic order)


MAX_DOC_CHARS = 8_000


def _chunks(text: str, max_chars: int = MAX_DOC_CHARS) -> list[str]:
    """Split a long text at blank lines into pieces of at most ~max_chars (documents of
    comparable size mix better and give every domain a real held-out split)."""
    if len(text) <= max_chars:
        return [text]
    out: list[str] = []
    cur: list[str] = []
    size = 0
    for para in text.split('\n\n'):
        if cur and size + len(para) > max_chars:
            out.append('\n\n'.join(cur))
            cur, size = [], 0
        cur.append(para)
        size += len(para) + 2
    if cur:
        out.append('\n\n'.join(cur))
    return out


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()['stdlib'])
    files = [p for p in root.rglob('*.py') if 'site-packages' not in p.parts and 'dist-packages' not in p.parts]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def code_docs(rng: random.Random) -> Iterator[Doc]:
    files = _stdlib_files()
    root = Path(sysconfig.get_paths()['stdlib'])
    rng.shuffle(files)
    for path in files:
        try:
            text = path.read_text(encoding='utf-8')
        except (UnicodeDecodeError, OSError):
            continue
        if len(text) < 200:
            continue
        for i, chunk in enumerate(_chunks(text)):
            yield Doc(f'code:{path.relative_to(root).as_posix()}#{i}', chunk)


def _docstrings(path: Path) -> str:
    try:
        tree = ast.parse(path.read_text(encoding='utf-8'))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return ''
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 80:
                parts.append(doc.strip())
    return '\n\n'.join(parts)


def _description(dist: metadata.Distribution) -> str:
    """An installed distribution's long description (its README), '' if it has none."""
    meta = cast(email.message.Message, dist.metadata)   # what importlib returns at runtime
    payload = meta.get_payload()
    return ((payload if isinstance(payload, str) else '') or meta.get('Description') or '').strip()


def prose_docs(rng: random.Random) -> Iterator[Doc]:
    """Package READMEs and stdlib docstrings, in a seeded order of sources; each source is
    read only when reached, so a small corpus does not parse the whole standard library."""
    # The environment's own site-packages only: sys.path can grow at run time (pkg_resources
    # adds setuptools' vendored packages), which must not change the corpus.
    paths = sorted({sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']})
    dists = {}
    for dist in metadata.distributions(path=paths):
        name = (dist.metadata['Name'] or '').lower()
        # Not our own package: its README changes with every commit (editable install), which
        # would change the corpus, the tokenizer and every demo number with it.
        if name and name not in dists and name.replace('_', '-') != 'foundry-ext':
            dists[name] = dist
    root = Path(sysconfig.get_paths()['stdlib'])
    sources: list[tuple[str, Path | metadata.Distribution]] = [(f'pkg:{n}', dists[n]) for n in sorted(dists)]
    sources += [(f'doc:{p.relative_to(root).as_posix()}', p) for p in _stdlib_files()]
    rng.shuffle(sources)
    for sid, src in sources:
        if isinstance(src, Path):
            text = _docstrings(src)
        else:
            text = _description(src)
        if len(text) >= 500:
            for i, chunk in enumerate(_chunks(text)):
                yield Doc(f'prose:{sid}#{i}', chunk)


def arithmetic_docs(rng: random.Random) -> Iterator[Doc]:
    i = 0
    while True:
        lines = []
        for _ in range(rng.randint(8, 24)):
            digits = rng.choice((1, 2, 2, 3, 3, 4))
            a = rng.randint(0, 10**digits - 1)
            b = rng.randint(0, 10**digits - 1)
            op = rng.choice('+-*')
            if op == '*':
                b = rng.randint(0, 99)
            c = a + b if op == '+' else a - b if op == '-' else a * b
            lines.append(f'{a} {op} {b} = {c}')
        yield Doc(f'arithmetic:{i}', '\n'.join(lines) + '\n')
        i += 1


_FIRST = ('Ada', 'Bruno', 'Chen', 'Dara', 'Elif', 'Femi', 'Gita', 'Hugo', 'Ines', 'Jonas', 'Kaia',
          'Luca', 'Mara', 'Nils', 'Omar', 'Priya', 'Quinn', 'Rosa', 'Sami', 'Tariq', 'Uma', 'Vera',
          'Wen', 'Ximena', 'Yara', 'Zoe')
_LAST = ('Abara', 'Berg', 'Costa', 'Dubois', 'Eriksen', 'Fischer', 'Garcia', 'Haddad', 'Ito',
         'Jansen', 'Kowalski', 'Lindqvist', 'Moreau', 'Nakamura', 'Okafor', 'Petrov', 'Quispe',
         'Rossi', 'Silva', 'Tanaka', 'Urquhart', 'Varga', 'Weber', 'Yilmaz', 'Zhou')
_CITIES = ('Lisbon', 'Nairobi', 'Osaka', 'Lima', 'Oslo', 'Pune', 'Quito', 'Riga', 'Seoul',
           'Tunis', 'Utrecht', 'Vienna', 'Warsaw', 'Xiamen', 'York', 'Zagreb')
_JOBS = ('baker', 'pilot', 'nurse', 'teacher', 'chemist', 'welder', 'farmer', 'editor',
         'architect', 'plumber', 'librarian', 'geologist')


def records_docs(rng: random.Random) -> Iterator[Doc]:
    i = 0
    year_now = 2025
    while True:
        lines = []
        for _ in range(rng.randint(3, 8)):
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            born = rng.randint(1940, 2005)
            city = rng.choice(_CITIES)
            lines += [
                f'id: {rng.randint(1000, 99999)}',
                f'name: {first} {last}',
                f'born: {born}',
                f'age: {year_now - born}',
                f'city: {city}',
                f'occupation: {rng.choice(_JOBS)}',
                f'email: {first.lower()}.{last.lower()}@{city.lower()}.example',
                '',
            ]
        yield Doc(f'records:{i}', '\n'.join(lines))
        i += 1


SOURCES: dict[str, Callable[[random.Random], Iterator[Doc]]] = {
    'code': code_docs,
    'prose': prose_docs,
    'arithmetic': arithmetic_docs,
    'records': records_docs,
}

# ---------------------------------------------------------------- building


def is_val(seed: int, doc_id: str, val_fraction: float) -> bool:
    """Held-out membership from (seed, document id) alone, independent of build order.
    (One exception: a build so small that no document drew val gives its last one to val.)"""
    h = int.from_bytes(hashlib.sha256(f'{seed}:{doc_id}'.encode()).digest()[:8], 'big')
    return h / 2**64 < val_fraction


def parse_mix(mix: str | dict[str, float] | None) -> dict[str, float]:
    if mix is None:
        return dict(DEFAULT_MIX)
    if isinstance(mix, str):
        out = {}
        for part in mix.split(','):
            name, _, value = part.partition('=')
            try:
                out[name.strip()] = float(value)
            except ValueError:
                raise UserError(f'--mix entry {part!r} is not name=fraction; '
                                'write e.g. code=0.4,prose=0.3,arithmetic=0.15,records=0.15') from None
        mix = out
    unknown = sorted(set(mix) - set(DOMAINS))
    if unknown:
        raise UserError(f'unknown corpus domain(s) {unknown}; choose from {list(DOMAINS)}')
    if any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise UserError('--mix fractions must be >= 0 and sum to more than 0')
    total = sum(mix.values())
    return {k: v / total for k, v in mix.items() if v > 0}


def build_corpus(out: str | Path, size_mb: float = 8.0, seed: int = 17, mix=None,
                 val_fraction: float = 0.05, overwrite: bool = False) -> dict:
    """Write ``out/<domain>/{train,val}.jsonl`` (one ``{"id", "text"}`` per line) and
    ``out/manifest.json``. Returns the manifest."""
    if size_mb <= 0:
        raise UserError(f'--size_mb must be > 0, got {size_mb}')
    if not 0 < val_fraction < 1:
        raise UserError(f'--val_fraction must be between 0 and 1, got {val_fraction}')
    fractions = parse_mix(mix)
    manifest: dict = {
        'seed': seed, 'size_mb': size_mb, 'val_fraction': val_fraction, 'mix': fractions,
        'python': sys.version.split()[0], 'domains': {},
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for domain, frac in fractions.items():
            budget = int(size_mb * 1e6 * frac)
            rng = random.Random(f'{seed}:{domain}')
            (tmp / domain).mkdir()
            counts = {s: {'docs': 0, 'bytes': 0} for s in SPLITS}
            hashes = {s: hashlib.sha256() for s in SPLITS}
            files = {s: open(tmp / domain / f'{s}.jsonl', 'w', encoding='utf-8') for s in SPLITS}
            written = 0
            try:
                for doc in SOURCES[domain](rng):
                    if written >= budget:
                        break
                    text = doc.text[:budget - written] if written + len(doc.text) > budget * 1.05 else doc.text
                    split = 'val' if is_val(seed, doc.id, val_fraction) else 'train'
                    if written + len(text) >= budget and counts['val']['docs'] == 0:
                        split = 'val'  # a small build still gets a held-out document
                    line = json.dumps({'id': doc.id, 'text': text}, ensure_ascii=False) + '\n'
                    files[split].write(line)
                    hashes[split].update(line.encode())
                    n = len(text.encode())
                    counts[split]['docs'] += 1
                    counts[split]['bytes'] += n
                    written += n
            finally:
                for f in files.values():
                    f.close()
            for s in SPLITS:
                if counts[s]['docs'] == 0:
                    raise UserError(f'corpus domain {domain!r} got no {s} documents at size_mb={size_mb}; '
                                    'raise --size_mb or --val_fraction')
            manifest['domains'][domain] = {
                s: {**counts[s], 'sha256': hashes[s].hexdigest()} for s in SPLITS}
            if written < budget * 0.95:
                manifest['domains'][domain]['note'] = (
                    f'source exhausted at {written} of {budget} bytes')
        (tmp / 'manifest.json').write_text(json.dumps(manifest, indent=2) + '\n')
    return manifest


def iter_texts(folder: str | Path, split: str = 'train') -> Iterator[str]:
    """Texts of every domain's ``split`` in a corpus folder, domain by domain."""
    folder = Path(folder)
    for domain in list_domains(folder):
        with open(folder / domain / f'{split}.jsonl', encoding='utf-8') as f:
            for line in f:
                yield json.loads(line)['text']


def list_domains(folder: str | Path) -> list[str]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f'corpus folder {folder} does not exist; build it with '
                        f'`python -m foundry_ext corpus --out {folder}`')
    domains = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith('.'))
    if not domains:
        raise UserError(f'corpus folder {folder} has no domain sub-folders; build it with '
                        f'`python -m foundry_ext corpus --out {folder}`')
    return domains
