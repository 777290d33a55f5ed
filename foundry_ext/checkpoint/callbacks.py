"""Composer adapters: ``checkpoint_integrity`` and ``preemption`` (llmfoundry_callbacks), and the
two hooks that route Composer's checkpoint writes and reads through :mod:`.integrity`.

Hooks (installed once per process by either callback, before the Trainer loads anything):

* ``composer.utils.checkpoint.save_checkpoint`` -- every Composer save (the CheckpointSaver's, a
  preemption save, ``Trainer.save_checkpoint``) writes a monolithic checkpoint to ``.tmp-<name>``
  and seals it (manifest, then rename); a sharded checkpoint folder is sealed once all ranks
  wrote it.
* ``composer.utils.checkpoint._torch_load_with_validation`` -- Composer's one ``torch.load`` of a
  checkpoint (``weights_only=False`` in Composer 0.32) becomes :func:`foundry_ext.safeload.load_checkpoint`.
  (Composer is pinned at 0.32.1; :func:`install_hooks` refuses to run if these names move.)

``preemption``: a SIGTERM/SIGINT only sets a flag (:mod:`.preempt`). Every ``check_interval``
batches (after the batch is loaded, before it is trained) and after every eval batch, the ranks
all-reduce the flag; when it is up, all of them stop at that point: the CheckpointSaver writes the
state after the last finished step (unless that checkpoint exists), an evaluation cut short is
recorded in the manifest (``pending_eval``: the next start runs it first), and
:class:`~.preempt.Preempted` is raised for the train command to exit with code 75. DataLoader
workers ignore the stop signals (the main process handles them).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from foundry_ext.checkpoint import integrity, preempt
from foundry_ext.checkpoint.config import CheckpointIntegrityConfig, PreemptionConfig
from foundry_ext.checkpoint.resume import list_checkpoints
from foundry_ext.validation import parse

log = logging.getLogger('foundry_ext')

__all__ = ['CheckpointIntegrity', 'Preemption', 'install_hooks']

_ORIG: dict[str, Any] = {}
TIME_KEYS = ('iteration', 'epoch', 'batch', 'sample', 'token', 'epoch_in_iteration', 'token_in_iteration',
             'batch_in_epoch', 'sample_in_epoch', 'token_in_epoch')


def timestamp_dict(ts: Any) -> dict[str, int]:
    sd = ts.state_dict()
    return {k: int(sd[k]) for k in TIME_KEYS if k in sd}


def _saver(state: State):
    from composer.callbacks import CheckpointSaver
    return next((cb for cb in state.callbacks if isinstance(cb, CheckpointSaver)), None)


def _meta(state: State) -> dict[str, Any]:
    return {'timestamp': timestamp_dict(state.timestamp), 'run_name': state.run_name,
            'max_duration': str(state.max_duration) if state.max_duration is not None else None,
            'world_size': dist.get_world_size(), 'config': integrity.SETTINGS.get('config'),
            'pending_eval': integrity.SETTINGS.get('pending_eval')}


def _sealed_save_checkpoint(state: State, filename: str = 'ep{epoch}-ba{batch}-rank{rank}', *,
                            weights_only: bool = False, ignore_keys: Any = None) -> Optional[str]:
    from composer.utils import checkpoint as ck
    orig = _ORIG['save_checkpoint']
    checksum = integrity.SETTINGS.get('verify', 'checksum') == 'checksum'
    if state.fsdp_sharded_state_dict_enabled:
        saved = orig(state, filename, weights_only=weights_only, ignore_keys=ignore_keys)
        folder = Path(ck.get_save_filename(state, filename)).parent
        if dist.get_global_rank() == 0:
            integrity.seal_dir(folder, checksum, **_meta(state))
        dist.barrier()
        return saved
    final = Path(ck.get_save_filename(state, filename))
    tmp = final.with_name(integrity.TMP_PREFIX + final.name)
    saved = orig(state, str(tmp).replace('{', '{{').replace('}', '}}'), weights_only=weights_only,
                 ignore_keys=ignore_keys)
    if not saved:
        return None
    integrity.seal_file(tmp, final, checksum, **_meta(state))
    integrity.mark_verified(final)
    _drop_orphan_manifests(final.parent)
    return str(final)


def _drop_orphan_manifests(folder: Path) -> None:
    """Manifests of checkpoints the saver rotated away."""
    names = set(os.listdir(folder))
    for n in names:
        if n.endswith(integrity.MANIFEST_SUFFIX) and n[:-len(integrity.MANIFEST_SUFFIX)] not in names:
            (folder / n).unlink(missing_ok=True)


def _verified_torch_load(checkpoint_filepath: Any, map_location: str = 'cpu') -> Any:
    return integrity.load_checkpoint(checkpoint_filepath, map_location=map_location)


def install_hooks() -> None:
    """Route Composer's checkpoint writes and reads through :mod:`.integrity` (idempotent)."""
    from composer.utils import checkpoint as ck
    if _ORIG:
        return
    for name in ('save_checkpoint', '_torch_load_with_validation', 'get_save_filename'):
        if not callable(getattr(ck, name, None)):
            raise RuntimeError(f'composer.utils.checkpoint.{name} is gone: foundry_ext.checkpoint supports '
                               'Composer 0.32 only')
    _ORIG['save_checkpoint'] = ck.save_checkpoint
    _ORIG['_torch_load_with_validation'] = ck._torch_load_with_validation
    ck.save_checkpoint = _sealed_save_checkpoint
    ck._torch_load_with_validation = _verified_torch_load


def uninstall_hooks() -> None:
    from composer.utils import checkpoint as ck
    if _ORIG:
        ck.save_checkpoint = _ORIG.pop('save_checkpoint')
        ck._torch_load_with_validation = _ORIG.pop('_torch_load_with_validation')


class CheckpointIntegrity(Callback):
    """Options: :class:`~foundry_ext.checkpoint.config.CheckpointIntegrityConfig` (verify, fallback,
    trusted_globals). Installs the hooks; on a resumed run, hands the checkpoints already in the
    save folder to the saver's rotation (Composer's own list starts empty each run, so
    ``save_num_checkpoints_to_keep`` would never delete the older ones)."""

    def __init__(self, **options: Any) -> None:
        self.cfg = parse(CheckpointIntegrityConfig, options, 'callbacks.checkpoint_integrity')
        integrity.SETTINGS.update(verify=self.cfg.verify, trusted_globals=tuple(self.cfg.trusted_globals))
        install_hooks()

    def fit_start(self, state: State, logger: Logger) -> None:
        saver = _saver(state)
        if saver is None or dist.get_global_rank() != 0 or saver.saved_checkpoints \
                or state.fsdp_sharded_state_dict_enabled or saver.num_checkpoints_to_keep <= 0:
            return
        from composer.utils import format_name_with_dist
        folder = format_name_with_dist(saver.folder, state.run_name)
        if '://' in folder:
            return
        now = int(state.timestamp.batch)
        older = [c for c in list_checkpoints(folder, saver.filename.filename, state.run_name).candidates
                 if c.sealed and 0 <= c.step <= now]
        saver.saved_checkpoints[:0] = [str(c.path) for c in reversed(older)]

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        tidy(state)

    def epoch_checkpoint(self, state: State, logger: Logger) -> None:
        tidy(state)

    def fit_end(self, state: State, logger: Logger) -> None:
        tidy(state)


def tidy(state: State) -> None:
    """Rank 0: drop the manifests of checkpoints the saver's rotation deleted."""
    saver = _saver(state)
    if saver is None or dist.get_global_rank() != 0:
        return
    from composer.utils import format_name_with_dist
    folder = Path(format_name_with_dist(saver.folder, state.run_name))
    if folder.is_dir():
        _drop_orphan_manifests(folder)


class Preemption(Callback):
    """Options: :class:`~foundry_ext.checkpoint.config.PreemptionConfig` (signals, check_interval,
    save, enabled)."""

    def __init__(self, **options: Any) -> None:
        self.cfg = parse(PreemptionConfig, options, 'callbacks.preemption')
        self.flag = preempt.FLAG
        if self.cfg.enabled:
            self.flag.reset()
            self.flag.announce = self._announce
            self.flag.install(self.cfg.signals)
            install_hooks()
        self._batches = 0
        self._loaded_batch: Optional[int] = None
        self.last_event: Optional[str] = None   # the loop event that started the current eval round

    @staticmethod
    def _announce(msg: str) -> None:
        if dist.get_global_rank() == 0:
            import sys
            print(msg, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------ setup
    def after_load(self, state: State, logger: Logger) -> None:
        b = int(state.timestamp.batch)
        self._loaded_batch = b if b > 0 else None
        if not self.cfg.enabled:
            return
        from torch.utils.data import DataLoader
        loaders = [state.train_dataloader] + [getattr(ev.dataloader, 'dataloader', None) for ev in state.evaluators]
        for dl in loaders:
            if isinstance(dl, DataLoader) and dl.num_workers > 0 \
                    and not isinstance(dl.worker_init_fn, preempt.IgnoreSignalsInWorker):
                dl.worker_init_fn = preempt.IgnoreSignalsInWorker(dl.worker_init_fn, self.cfg.signals)

    def batch_end(self, state: State, logger: Logger) -> None:
        self.last_event = 'BATCH_END'

    def epoch_end(self, state: State, logger: Logger) -> None:
        self.last_event = 'EPOCH_END'

    def fit_end(self, state: State, logger: Logger) -> None:
        self.last_event = 'FIT_END'
        self.flag.uninstall()

    def close(self, state: State, logger: Logger) -> None:
        self.flag.uninstall()

    # ------------------------------------------------------------------------------ checks
    def after_dataloader(self, state: State, logger: Logger) -> None:
        self.last_event = None
        self._batches += 1
        if self.cfg.enabled and self._batches % self.cfg.check_interval == 0:
            sig = self._agreed(state)
            if sig:
                self._stop(state, logger, sig, None)

    def eval_batch_end(self, state: State, logger: Logger) -> None:
        if self.cfg.enabled:
            sig = self._agreed(state)
            if sig:
                pending = None
                if self.last_event is not None and int(state.timestamp.batch) > 0:
                    pending = {'batch': int(state.timestamp.batch), 'event': self.last_event,
                               'previous_timestamp': timestamp_dict(state.previous_timestamp)
                               if state.previous_timestamp is not None else None}
                self._stop(state, logger, sig, pending)

    def _agreed(self, state: State) -> int:
        """The stop signal if any rank has one (MAX over ranks), else 0."""
        if dist.get_world_size() <= 1:
            return self.flag.signum
        t = state.device.tensor_to_device(torch.tensor([self.flag.signum], dtype=torch.int32))
        dist.all_reduce(t, reduce_operation='MAX')
        return int(t.item())

    # ------------------------------------------------------------------------------ stop
    def _stop(self, state: State, logger: Logger, sig: int, pending: Optional[dict]) -> None:
        step = int(state.timestamp.batch)
        saver = _saver(state)
        path: Optional[str] = None
        saved = False
        if self.cfg.save and saver is not None and step > 0:
            last = saver.last_checkpoint_batch
            have = (last is not None and int(last) == step) or self._loaded_batch == step
            if have:
                path = saver.saved_checkpoints[-1] if (last is not None and int(last) == step
                                                       and saver.saved_checkpoints) else state.load_path
                if pending is not None and path and dist.get_global_rank() == 0:
                    integrity.update_manifest(path, pending_eval=pending)
            else:
                integrity.SETTINGS['pending_eval'] = pending
                try:
                    saver._save_checkpoint(state, logger)   # symlink, rotation, upload: as at an interval
                finally:
                    integrity.SETTINGS['pending_eval'] = None
                path = saver.saved_checkpoints[-1] if saver.saved_checkpoints else None
            if saver.remote_uploader is not None:
                saver.fit_end(state, logger)   # wait for the uploads
            tidy(state)
            saved = True
        self.flag.uninstall()
        name = preempt.signal_name(sig)
        where = f'during the evaluation at step {step}' if pending is not None else f'at step {step}'
        if saved:
            msg = (f'stopped by {name} {where}; checkpoint {path or "(written by rank 0)"} saved; re-run the same '
                   f'command to resume (exit code {preempt.EXIT_PREEMPTED})')
        elif step == 0 or self._loaded_batch == step:
            msg = (f'stopped by {name} {where}, before any new step; nothing to save, re-run the same command '
                   f'to continue (exit code {preempt.EXIT_PREEMPTED})')
            saved = True   # nothing was lost: the next start continues from the same point
        else:
            why = 'preemption.save is false' if not self.cfg.save else 'no save_folder is set'
            msg = f'stopped by {name} {where} without a checkpoint ({why}); steps since the last one are lost'
        raise preempt.Preempted(sig, step, (path or '') if saved else None, msg)
