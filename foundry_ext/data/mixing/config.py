"""Typed options of the ``mixture`` loader and the ``mix_logger`` callback (no torch).

:class:`MixtureConfig` is parsed once from the loader mapping (``validation.parse``): the streams,
the schedule (:class:`~foundry_ext.data.mixing.schedule.Schedule`), the shuffle knobs and the
adaptive controller come out typed, and both ``config/validate.py`` and the loader use it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from foundry_ext.data.mixing.adaptive import AdaptiveConfig, parse_adaptive
from foundry_ext.data.mixing.mixer import parse_shuffle
from foundry_ext.data.mixing.schedule import Schedule, parse_schedule
from foundry_ext.errors import UserError
from foundry_ext.validation import ConfigError, collect, known_keys, section

STREAM_KEYS = ('local', 'remote', 'split')


@dataclass(frozen=True)
class StreamSpec:
    """One MDS stream: its local folder (the cache folder when ``remote`` is set) and split."""
    local: str
    remote: Optional[str] = None
    split: Optional[str] = None

    @property
    def folder(self) -> Path:
        return Path(self.local) / (self.split or '')

    @property
    def index_path(self) -> Path:
        return self.folder / 'index.json'

    def as_dict(self) -> dict[str, Any]:
        return {'local': self.local, 'remote': self.remote, 'split': self.split}


def parse_streams(streams: Any, split: Optional[str], where: str = 'streams') -> dict[str, StreamSpec]:
    if not isinstance(streams, dict) or not streams:
        raise UserError(f'{where} must be a non-empty mapping {{<name>: {{local: <MDS folder>}}}}')
    out = {}
    for name, s in streams.items():
        if isinstance(s, str):
            s = {'local': s}
        if not isinstance(s, dict):
            raise UserError(f'{where}.{name} must be a mapping with local (and optionally remote, split)')
        known_keys(s, STREAM_KEYS, f'{where}.{name}')
        if not isinstance(s.get('local'), str):
            raise UserError(f'{where}.{name}.local is required: the MDS folder (cache folder with a remote)')
        out[str(name)] = StreamSpec(s['local'], s.get('remote'), s.get('split', split))
    return out


@dataclass
class MixtureConfig:
    """The ``mixture`` loader mapping (``train_loader`` / ``eval_loader``)."""
    streams: dict[str, Any]
    schedule: dict[str, Any]
    split: Optional[str] = None                 # default split of every stream
    shuffle: Union[dict[str, Any], bool, None] = None   # {preset, seed} or streaming's knobs
    adaptive: Union[dict[str, Any], bool, None] = None  # online reweighting (optional)
    max_seq_len: Optional[int] = None
    drop_last: bool = True
    num_workers: int = 0
    pin_memory: Optional[bool] = None
    prefetch_factor: Optional[int] = None
    persistent_workers: Optional[bool] = None
    timeout: int = 0
    cache_limit: Union[int, str, None] = None   # remote streams: local cache size cap, e.g. 10gb (LRU eviction)
    label: Optional[str] = None                 # eval_loaders entries
    name: str = 'mixture'
    # parsed once, in __post_init__
    stream_specs: dict[str, StreamSpec] = field(init=False)
    cache_bytes: Optional[int] = field(init=False)
    plan: Schedule = field(init=False)
    shuffle_knobs: dict[str, Any] = field(init=False)
    adaptive_cfg: Optional[AdaptiveConfig] = field(init=False)
    notes: list[str] = field(init=False)        # normalizations to print once

    def __post_init__(self) -> None:
        w = section('train_loader')
        self.stream_specs = parse_streams(self.streams, self.split, f'{w}.streams')
        names = list(self.stream_specs)
        self.plan, self.notes = parse_schedule(self.schedule, names, f'{w}.schedule')
        self.shuffle_knobs = parse_shuffle(self.shuffle, f'{w}.shuffle')
        self.adaptive_cfg = parse_adaptive(self.adaptive, names, f'{w}.adaptive')
        if self.max_seq_len is not None and self.max_seq_len <= 0:
            raise UserError(f'{w}.max_seq_len must be a positive integer, got {self.max_seq_len!r}')
        if self.drop_last is False:
            raise UserError(f'{w}.drop_last must be true for the mixture loader (every batch is full)')
        if self.num_workers < 0:
            raise UserError(f'{w}.num_workers must be an integer >= 0, got {self.num_workers!r}')
        self.cache_bytes = parse_bytes(self.cache_limit, f'{w}.cache_limit')
        if self.cache_bytes is not None and not any(s.remote for s in self.stream_specs.values()):
            raise UserError(f'{w}.cache_limit is set but no stream has a remote: only downloaded shards are evicted')


_UNITS = {'b': 1, 'kb': 10 ** 3, 'mb': 10 ** 6, 'gb': 10 ** 9, 'tb': 10 ** 12,
          'kib': 2 ** 10, 'mib': 2 ** 20, 'gib': 2 ** 30, 'tib': 2 ** 40}


def parse_bytes(value: Union[int, str, None], where: str) -> Optional[int]:
    """``10gb`` / ``512mib`` / an int number of bytes -> bytes (None stays None)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        import re
        m = re.match(r'^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$', str(value).lower())
        if not m:
            raise UserError(f'{where} {value!r} is not a size; write e.g. 10gb, 512mb or a number of bytes')
        n = int(float(m.group(1)) * _UNITS[m.group(2) or 'b'])
    if n <= 0:
        raise UserError(f'{where} must be > 0, got {value!r}')
    return n


@dataclass
class MixLoggerConfig:
    """``mix_logger`` callback options."""
    log_interval: int = 1                 # batches between mix/* metrics
    record_samples: Optional[str] = None  # path prefix: write every sample's (stream, id) per rank

    def __post_init__(self) -> None:
        if self.log_interval < 1:
            raise UserError(f'callbacks.mix_logger.log_interval must be an integer >= 1, got {self.log_interval!r}')


def read_stream_index(name: str, spec: StreamSpec) -> list[int]:
    """Shard sample counts of a local MDS stream; one clear line if it is not one."""
    import json
    path = spec.index_path
    where = f'stream {name!r} ({spec.folder})'
    if not path.is_file():
        if spec.remote:
            return []   # fetched at build time from the remote
        if not Path(spec.local).exists():
            raise UserError(f'{where}: folder does not exist; build it with `make data` or '
                            'data_prep/convert_text_to_mds.py')
        raise UserError(f'{where} is not an MDS dataset: no index.json there (is split right? '
                        'convert with data_prep/convert_text_to_mds.py)')
    try:
        obj = json.loads(path.read_text())
        sizes = [int(s['samples']) for s in obj['shards']]
        if obj.get('version') != 2 or any(s.get('format') != 'mds' for s in obj['shards']):
            raise ValueError('not MDS version 2')
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f'{where} is not an MDS dataset: {path} is not a valid MDS index') from None
    if sum(sizes) == 0:
        raise UserError(f'{where} is empty (0 samples); remove it from streams or convert data into it')
    return sizes


def check_data(cfg: MixtureConfig) -> None:
    """Every stream is a whole MDS dataset (a remote one: its index fetched, its cached shards checked)."""
    from foundry_ext.data.mds_check import check_stream
    where = section('train_loader')
    problems: list[str] = []
    for name, spec in cfg.stream_specs.items():
        if not spec.remote and collect(problems, read_stream_index, name, spec) is None:
            continue                            # the friendlier lines for a folder that is not MDS at all
        collect(problems, check_stream, spec.local, spec.remote, spec.split, f'{where}.streams.{name}')
    if problems:
        raise ConfigError(problems)
