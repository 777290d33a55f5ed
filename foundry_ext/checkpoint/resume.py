"""Resume by default: which checkpoint a re-run starts from, decided before Composer is imported.

:func:`resume_defaults` turns a training config into one that resumes when its command is re-run
(autoresume on unless ``autoresume: false``; a stable ``run_name``, from the config file's name
when unset; ``save_folder`` ``runs/<run_name>/checkpoints`` when unset; the ``checkpoint_integrity``
and ``preemption`` callbacks on). :func:`decide` (rank 0) lists the save folder's checkpoints,
verifies them newest first, sets damaged ones aside (one line each, naming the file), removes
unfinished writes, and returns the newest intact one -- or says the run already finished.
Composer then loads exactly that file (``load_path``), so its own autoresume never meets a
damaged checkpoint. Remote save folders (``s3://...``) are left to Composer's autoresume.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from foundry_ext.checkpoint.config import CheckpointIntegrityConfig
from foundry_ext.checkpoint.integrity import (
    DAMAGED_SUFFIX,
    MANIFEST_SUFFIX,
    TMP_PREFIX,
    CheckpointError,
    read_manifest,
    verify,
)
from foundry_ext.errors import UserError
from foundry_ext.validation import parse

DEFAULT_FILENAME = 'ep{epoch}-ba{batch}-rank{rank}.pt'
DEFAULT_LATEST = 'latest-rank{rank}.pt'
_UNITS = {'ba': 'batch', 'ep': 'epoch', 'tok': 'token', 'sp': 'sample'}
_TIME_FIELDS = ('epoch', 'batch', 'sample', 'token', 'batch_in_epoch', 'sample_in_epoch', 'token_in_epoch')
# Keys whose change between the checkpoint's config and this one is expected, not news.
_QUIET = ('load_path', 'load_weights_only', 'load_ignore_keys', 'autoresume', 'variables')


def parse_duration(md: Any) -> Optional[tuple[float, str]]:
    """``'200ba'`` -> (200, 'batch'); an int is epochs; None for what cannot be compared."""
    if isinstance(md, bool):
        return None
    if isinstance(md, int):
        return float(md), 'epoch'
    m = re.match(r'^\s*(\d+(?:\.\d+)?)\s*(ba|ep|tok|sp)\s*$', str(md))
    return (float(m.group(1)), _UNITS[m.group(2)]) if m else None


def is_finished(timestamp: Optional[dict], max_duration: Any) -> bool:
    """Composer's own test (``max_duration <= elapsed``) on a checkpoint's timestamp."""
    d = parse_duration(max_duration)
    if not timestamp or d is None or d[1] not in timestamp:
        return False
    return float(timestamp[d[1]]) >= d[0]


def _pattern(filename: str, run_name: str) -> re.Pattern:
    """Rank 0's file names of ``save_filename`` as a regex with the time fields as groups."""
    rx = re.escape(os.path.basename(filename))
    for f in _TIME_FIELDS:
        rx = rx.replace(re.escape('{' + f + '}'), f'(?P<{f}>\\d+)')
    for k, v in (('rank', '0'), ('local_rank', '0'), ('node_rank', '0'), ('run_name', run_name)):
        rx = rx.replace(re.escape('{' + k + '}'), re.escape(v))
    rx = re.sub(r'\\\{[a-z_]+\\\}', r'[^/]*', rx)
    return re.compile(f'^{rx}$')


@dataclass
class Candidate:
    path: Path
    timestamp: dict           # at least 'batch'
    sealed: bool              # has a manifest

    @property
    def step(self) -> int:
        return int(self.timestamp.get('batch', -1))


@dataclass
class Listing:
    candidates: list[Candidate]          # newest first
    unfinished: list[Path]               # .tmp- leftovers of writes a crash interrupted
    orphans: list[Path]                  # manifests whose checkpoint is gone (rotated away)


def list_checkpoints(folder: str | os.PathLike, filename: str = DEFAULT_FILENAME, run_name: str = '') -> Listing:
    folder = Path(folder)
    out = Listing([], [], [])
    if not folder.is_dir():
        return out
    pat = _pattern(filename, run_name)
    shard_pat = _pattern('ep{epoch}-ba{batch}', run_name)
    names = set(os.listdir(folder))
    for name in sorted(names):
        p = folder / name
        if name.startswith(TMP_PREFIX):
            out.unfinished.append(p)
            continue
        if DAMAGED_SUFFIX in name or p.is_symlink():
            continue
        if name.endswith(MANIFEST_SUFFIX):
            if name[:-len(MANIFEST_SUFFIX)] not in names:
                out.orphans.append(p)
            continue
        try:
            m = read_manifest(p)
        except CheckpointError:
            m = {'timestamp': None}
        ts = (m or {}).get('timestamp') if m is not None else None
        if m is None:
            hit = (pat.match(name) if p.is_file() else shard_pat.match(name) if p.is_dir() else None)
            if hit is None:
                continue
            ts = {k: int(v) for k, v in hit.groupdict().items() if v is not None}
        if not isinstance(ts, dict) or 'batch' not in ts:
            hit = pat.match(name) or shard_pat.match(name)
            ts = {k: int(v) for k, v in (hit.groupdict() if hit else {}).items() if v is not None}
            ts.setdefault('batch', -1)
        out.candidates.append(Candidate(p, ts, m is not None))
    out.candidates.sort(key=lambda c: (c.step, c.path.stat().st_mtime), reverse=True)
    return out


def set_aside(p: Path) -> Path:
    """Rename a damaged checkpoint (and its manifest) to ``<name>.damaged`` (never deleted)."""
    dst = p.with_name(p.name + DAMAGED_SUFFIX)
    i = 1
    while dst.exists():
        i += 1
        dst = p.with_name(f'{p.name}{DAMAGED_SUFFIX}{i}')
    os.replace(p, dst)
    mp = p.with_name(p.name + MANIFEST_SUFFIX)
    if mp.exists():
        os.replace(mp, dst.with_name(dst.name + MANIFEST_SUFFIX))
    return dst


def _remove(p: Path) -> None:
    import shutil
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ the command's defaults


@dataclass
class ResumeSettings:
    enabled: bool
    run_name: Optional[str]
    folder: Optional[Path]                 # the local save folder (None: none, or remote)
    remote: bool
    filename: str
    latest: str
    integrity: CheckpointIntegrityConfig
    notes: list[str] = field(default_factory=list)


def resume_defaults(cfg: dict[str, Any], config_path: str | os.PathLike) -> ResumeSettings:
    """Make ``cfg`` (a validated training config, changed in place) resume when re-run."""
    explicit = cfg.get('autoresume') is not None
    enabled = bool(cfg['autoresume']) if explicit else True
    notes: list[str] = []
    if cfg.get('save_weights_only'):
        if explicit and enabled:
            raise UserError('autoresume needs full checkpoints but save_weights_only is true; set '
                            'save_weights_only=false, or autoresume=false')
        enabled = False
    run_name = cfg.get('run_name') or os.environ.get('RUN_NAME')
    if enabled and not run_name:
        run_name = Path(config_path).stem
        cfg['run_name'] = run_name
        notes.append(f'run_name is not set: using {run_name!r} (the config file name), so a re-run resumes it')
    if enabled and not cfg.get('save_folder'):
        cfg['save_folder'] = f'runs/{run_name}/checkpoints'
        notes.append(f"save_folder is not set: checkpoints go to {cfg['save_folder']}")
    cbs = cfg.get('callbacks')
    if not isinstance(cbs, dict):
        cbs = cfg['callbacks'] = {}
    for name in ('checkpoint_integrity', 'preemption'):
        if cbs.get(name) is None:
            cbs[name] = {}
    integ = parse(CheckpointIntegrityConfig, cbs['checkpoint_integrity'], 'callbacks.checkpoint_integrity')
    folder = cfg.get('save_folder')
    remote = isinstance(folder, str) and '://' in folder
    local = None
    if isinstance(folder, str) and not remote:
        local = Path(folder.replace('{run_name}', str(run_name or '')))
    # Local folders: decide() picks the checkpoint and hands it to Composer as load_path, so
    # Composer's own autoresume (which trusts the `latest` symlink blindly) stays off.
    cfg['autoresume'] = bool(enabled and remote)
    fs = cfg.get('fsdp_config') or {}
    sharded = isinstance(fs, dict) and fs.get('state_dict_type') == 'sharded'
    latest = cfg.get('save_latest_filename') or ('latest-sharded-rank{rank}' if sharded else DEFAULT_LATEST)
    return ResumeSettings(enabled, run_name, local, remote, cfg.get('save_filename') or DEFAULT_FILENAME, latest,
                          integ, notes)


# ------------------------------------------------------------------------------ the decision


@dataclass
class Decision:
    load_path: Optional[str] = None      # the checkpoint this run resumes from
    step: int = 0
    finished: bool = False
    pending_eval: Optional[dict] = None  # an evaluation a preemption interrupted (replayed first)
    lines: list[str] = field(default_factory=list)   # what rank 0 prints, one line each
    error: Optional[str] = None          # a user mistake found on rank 0 (every rank exits 2)


def _flat(d: Any, prefix: str = '') -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f'{prefix}.{k}' if prefix else str(k)))
    return out


def config_changes(old: Optional[dict], new: dict) -> list[str]:
    """``key (old -> new)`` for each setting that differs between two configs."""
    if not isinstance(old, dict):
        return []
    a, b = _flat(old), _flat(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if k.split('.')[0] in _QUIET or a.get(k) == b.get(k):
            continue
        out.append(f'{k} ({_short(a.get(k, "unset"))} -> {_short(b.get(k, "unset"))})')
    return out


def _short(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 40 else s[:37] + '...'


def decide(cfg: dict[str, Any], st: ResumeSettings) -> Decision:
    """Rank 0: the checkpoint to resume from (tidying the save folder), or a fresh start."""
    d = Decision()
    try:
        if st.enabled and st.folder is not None:
            _choose(cfg, st, d)
        elif st.folder is not None and not cfg.get('save_overwrite'):
            newest = list_checkpoints(st.folder, st.filename, st.run_name or '').candidates
            if newest:
                raise UserError(
                    f'save_folder {st.folder} already holds checkpoints of an earlier run (newest: '
                    f'{newest[0].path.name}) and autoresume is false; drop autoresume=false to resume it, '
                    'set save_overwrite=true to start over in that folder, or choose another run_name')
        if d.load_path is None:
            _check_load_path(cfg, st)
    except UserError as e:
        d.error = str(e)
    return d


def _choose(cfg: dict[str, Any], st: ResumeSettings, d: Decision) -> None:
    assert st.folder is not None
    listing = list_checkpoints(st.folder, st.filename, st.run_name or '')
    for p in listing.unfinished:
        _remove(p)
        d.lines.append(f'foundry_ext: removed {p}, a checkpoint write that did not finish '
                       '(the run stopped while saving)')
    for p in listing.orphans:
        p.unlink(missing_ok=True)
    chosen = None
    for c in listing.candidates:
        try:
            m = verify(c.path, st.integrity.verify)
        except CheckpointError as e:
            if not st.integrity.fallback:
                raise CheckpointError(f'{e}; set callbacks.checkpoint_integrity.fallback=true to resume from '
                                      'the newest intact checkpoint instead') from None
            dst = set_aside(c.path)
            d.lines.append(f'foundry_ext: {e}; set it aside as {dst.name}, falling back to an older checkpoint')
            continue
        chosen, manifest = c, m
        break
    if chosen is None:
        if listing.candidates:
            d.lines.append(f'foundry_ext: no intact checkpoint left in {st.folder}; run {st.run_name} starts '
                           'from step 0')
        return
    d.load_path, d.step = str(chosen.path), chosen.step
    d.pending_eval = (manifest or {}).get('pending_eval')
    _repoint_latest(st, chosen.path)
    md = cfg.get('max_duration')
    if d.pending_eval is None and is_finished(chosen.timestamp, md):
        d.finished = True
        d.lines.append(f'foundry_ext: run {st.run_name} already finished: {chosen.path} is at step {chosen.step} '
                       f'and max_duration is {md}; nothing to do (raise max_duration to train on, or set '
                       'run_name=<new name> for a new run)')
        return
    extra = ''
    if d.pending_eval is not None:
        extra = f'; first the evaluation at step {chosen.step} that the stop interrupted'
    d.lines.append(f'foundry_ext: resuming run {st.run_name} from {chosen.path} at step {chosen.step} '
                   f'(max_duration {md}){extra}')
    changes = config_changes((manifest or {}).get('config'), cfg)
    if changes:
        more = f' and {len(changes) - 4} more' if len(changes) > 4 else ''
        d.lines.append('foundry_ext: note: the config differs from the one that wrote this checkpoint: '
                       + ', '.join(changes[:4]) + more)


def _repoint_latest(st: ResumeSettings, target: Path) -> None:
    """Composer's ``latest`` symlink points at the checkpoint we resume from (not a damaged one)."""
    link = target.parent / st.latest.replace('{rank}', '0')
    if link.is_symlink():
        try:
            if os.readlink(link) == target.name:
                return
            link.unlink(missing_ok=True)
            os.symlink(target.name, link)
        except OSError:
            pass


def _check_load_path(cfg: dict[str, Any], st: ResumeSettings) -> None:
    lp = cfg.get('load_path')
    if not isinstance(lp, str) or '://' in lp:
        return
    if not Path(lp).exists():
        raise CheckpointError(f'load_path {lp} does not exist; point it at a checkpoint file (e.g. '
                              'runs/<run>/checkpoints/latest-rank0.pt) or remove it')
    verify(lp, st.integrity.verify)


def apply(cfg: dict[str, Any], d: Decision) -> None:
    """Every rank: load the chosen checkpoint as a full resumption (as Composer's autoresume does)."""
    if d.load_path is None:
        return
    cfg['load_path'] = d.load_path
    cfg['load_weights_only'] = False
    cfg.pop('load_ignore_keys', None)


__all__ = ['Candidate', 'Decision', 'ResumeSettings', 'apply', 'config_changes', 'decide', 'is_finished',
           'list_checkpoints', 'parse_duration', 'resume_defaults', 'set_aside']
