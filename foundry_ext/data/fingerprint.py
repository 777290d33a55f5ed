"""The training data's identity, saved in every checkpoint and checked when a run resumes.

The fingerprint is a sha256 over the ``index.json`` of every MDS dataset the train loader reads
(keyed by stream / domain name: shard names, sizes, sample counts and stored hashes, not the folder
paths, so moving the data keeps it). The train command computes it after validation and adds the
``data_fingerprint`` callback (:class:`DataFingerprint`), whose ``state_dict`` Composer writes into
each checkpoint. Resuming from a checkpoint (autoresume or ``load_path`` with the training state)
whose fingerprint differs is refused in one line naming the streams that changed, unless the yaml
says it is intended::

    callbacks:
      data_fingerprint: {allow_data_change: true}     # e.g. continued pretraining on new data

Loading weights only (``load_weights_only: true``) carries no training state and is never checked.
The callback is registered in ``llmfoundry_callbacks``, so plain LLM Foundry yamls can name it too.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from foundry_ext.errors import UserError

log = logging.getLogger(__name__)
NAME = 'data_fingerprint'


@dataclass
class DataFingerprintConfig:
    """``data_fingerprint`` callback options (``fingerprint``/``datasets`` are filled in by the train command)."""
    allow_data_change: bool = False      # resume even when the checkpoint was trained on other data
    fingerprint: Optional[str] = None    # sha256 over the train datasets' index.json files
    datasets: dict[str, str] = field(default_factory=dict)   # {stream: sha256 of its index.json}


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def combine(datasets: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(datasets):
        h.update(f'{name}\0{datasets[name]}\n'.encode())
    return h.hexdigest()


def _index(folder: Path) -> Optional[bytes]:
    p = folder / 'index.json'
    return p.read_bytes() if p.is_file() else None


def _stream_index(local: Optional[str], remote: Optional[str], split: Optional[str]) -> Optional[bytes]:
    from foundry_ext.data.remote import local_folder
    sub = split or ''
    src = local_folder(remote)
    for folder in ([src / sub] if src is not None else []) + ([Path(local) / sub] if local else []):
        raw = _index(folder)
        if raw is not None:
            return raw
    return None


def loader_datasets(loader: Any) -> dict[str, str]:
    """``{stream name: sha256 of its index.json}`` of a train loader mapping (the loaders we know:
    corpus_text, mixture, LLM Foundry's text / finetuning with MDS data); streams whose index is
    not on this machine yet are left out."""
    if not isinstance(loader, dict):
        return {}
    name = loader.get('name')
    inner = loader.get('dataset')
    ds: dict[str, Any] = inner if isinstance(inner, dict) else {}
    found: dict[str, Optional[bytes]] = {}
    if name == 'corpus_text':
        from foundry_ext.data.corpus_text import corpus_streams
        try:
            parts = corpus_streams(ds['root'], str(ds.get('split', 'train')), ds.get('domains'),
                                   remote=ds.get('remote'))
        except (UserError, KeyError, OSError):
            return {}
        found = {d: _stream_index(s['local'], s.get('remote'), s['split']) for d, s in parts.items()}
    elif name == 'mixture':
        from foundry_ext.data.mixing.config import parse_streams
        try:
            specs = parse_streams(loader.get('streams'), loader.get('split'))
        except UserError:
            return {}
        found = {n: _stream_index(s.local, s.remote, s.split) for n, s in specs.items()}
    elif name in ('text', 'finetuning') and not ds.get('hf_name'):
        given = ds.get('streams')
        if isinstance(given, dict) and given:
            streams: dict[str, Any] = given
            found = {str(n): _stream_index(s.get('local'), s.get('remote'), s.get('split', ds.get('split')))
                     for n, s in streams.items() if isinstance(s, dict)}
        else:
            found = {'dataset': _stream_index(ds.get('local'), ds.get('remote'), ds.get('split'))}
    return {k: digest(v) for k, v in found.items() if v is not None}


def add_to_config(cfg: dict[str, Any]) -> Optional[str]:
    """Add (or fill in) the ``data_fingerprint`` callback of a training config; the fingerprint,
    or None when the train loader reads no MDS data this machine can see."""
    datasets = loader_datasets(cfg.get('train_loader'))
    if not datasets:
        return None
    fp = combine(datasets)
    cbs = cfg.get('callbacks')
    if cbs is None:
        cbs = cfg['callbacks'] = {}
    if not isinstance(cbs, dict):
        return None
    opts = dict(cbs.get(NAME) or {})
    opts.update(fingerprint=fp, datasets=datasets)
    cbs[NAME] = opts
    return fp


def compare(saved: dict[str, Any], cfg: DataFingerprintConfig) -> Optional[str]:
    """None when the data is the same (or either side has no fingerprint), else what changed."""
    old = saved.get('fingerprint') if isinstance(saved, dict) else None
    if not old or not cfg.fingerprint or old == cfg.fingerprint:
        return None
    before, now = dict(saved.get('datasets') or {}), cfg.datasets
    parts = []
    changed = sorted(n for n in set(before) & set(now) if before[n] != now[n])
    if changed:
        parts.append(f"changed: {', '.join(changed)}")
    if set(now) - set(before):
        parts.append(f"added: {', '.join(sorted(set(now) - set(before)))}")
    if set(before) - set(now):
        parts.append(f"removed: {', '.join(sorted(set(before) - set(now)))}")
    return '; '.join(parts) or f'fingerprint {old[:12]} -> {cfg.fingerprint[:12]}'


def _build_callback_class() -> type:
    from composer.core import Callback

    class DataFingerprint(Callback):
        """Composer callback: saves the data fingerprint in checkpoints, refuses a resume on other data."""

        def __init__(self, **options: Any) -> None:
            from foundry_ext.validation import parse
            self.cfg = parse(DataFingerprintConfig, options, f'callbacks.{NAME}')

        def state_dict(self) -> dict[str, Any]:
            return {'fingerprint': self.cfg.fingerprint, 'datasets': dict(self.cfg.datasets)}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            what = compare(state, self.cfg)
            if what is None:
                return
            if self.cfg.allow_data_change:
                log.warning('resuming on different training data than the checkpoint was trained on (%s); '
                            'allowed by callbacks.%s.allow_data_change', what, NAME)
                return
            raise UserError(f'the checkpoint was trained on different data than this config reads ({what}); '
                            f'point the loader back at that data, or set callbacks.{NAME}.allow_data_change=true '
                            'if the change is intended')

    DataFingerprint.__module__ = __name__
    return DataFingerprint


def __getattr__(name: str) -> Any:
    """``DataFingerprint`` (the Composer callback) is built on first use, so the config half of this
    module imports without Composer (validation runs before the heavy imports)."""
    if name == 'DataFingerprint':
        cls = _build_callback_class()
        globals()['DataFingerprint'] = cls
        return cls
    raise AttributeError(name)
