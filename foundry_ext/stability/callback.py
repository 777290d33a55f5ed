"""`loss_spike_guard`: detect loss / grad-norm spikes and recover (skip, cool down, roll back, stop).

Thin Composer adapter over :class:`foundry_ext.stability.spike.SpikeGuard` (all statistics and the action
ladder live there). Where it hooks into Composer's step:

* ``AFTER_LOSS`` (each microbatch): accumulate the loss, weighted by samples; no host sync.
* ``AFTER_BACKWARD`` (last microbatch): the global gradient norm, before gradient clipping
  (clipping is an algorithm and runs at ``AFTER_TRAIN_BATCH``, ahead of callbacks).
* ``AFTER_TRAIN_BATCH`` (inside the optimizer-step closure, before the update): one all-reduce of
  (loss * samples, samples, grad norm^2) so every rank sees the same numbers and decides the same;
  the guard decides. **skip** sets every ``p.grad`` to ``None`` so the optimizer step that follows
  leaves weights and moments untouched (Composer's loop, schedulers and timestamps run as usual);
  **cooldown** multiplies the LR of the coming steps by ``cooldown_factor``.
* ``BATCH_END``: LR restored; a pending **rollback** restores model + optimizer from the newest
  checkpoint saved at or before the incident's first spike (the CheckpointSaver's files). The data
  from that checkpoint to the spike is not replayed (the loader and the timestamp go on), and
  ``rollback_skip_batches`` more batches are consumed without updates: PaLM's recipe.
* **stop** raises :class:`foundry_ext.stability.spike.SpikeStop` on every rank with one clear line.

Guard state (windows, counters, ladder position, cooldown) is in this callback's ``state_dict``,
so it survives checkpoint/resume. Metrics: ``loss_spike/...``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from foundry_ext import safeload
from foundry_ext.errors import UserError
from foundry_ext.stability.config import InjectSpikeConfig, LossSpikeGuardConfig
from foundry_ext.stability.spike import Decision, SpikeGuard, SpikeStop
from foundry_ext.validation import parse

log = logging.getLogger('foundry_ext')

__all__ = ['LossSpikeGuard', 'SpikeInjector']


def _num_samples(batch: Any) -> int:
    if isinstance(batch, dict):
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                return int(v.shape[0])
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return int(batch[0].shape[0])
    return 1


def _params(state: State):
    for opt in state.optimizers:
        for group in opt.param_groups:
            yield from group['params']


def _saved_batch(path: Any, default: int) -> int:
    try:
        m = safeload.read_manifest(path)
    except UserError:
        m = None
    ts = (m or {}).get('timestamp') or {}
    return int(ts['batch']) if isinstance(ts.get('batch'), int) else default


def _checkpoint_saver(state: State):
    from composer.callbacks import CheckpointSaver
    return next((cb for cb in state.callbacks if isinstance(cb, CheckpointSaver)), None)


class LossSpikeGuard(Callback):
    """Options: :class:`foundry_ext.stability.config.LossSpikeGuardConfig` (the detector's window,
    warmup, threshold, min_rise, grad_threshold, grad_min_rise, actions, recover_steps,
    cooldown_steps, cooldown_factor, stop_after; plus rollback_skip_batches and log_window)."""

    def __init__(self, **options: Any) -> None:
        cfg = parse(LossSpikeGuardConfig, options, 'callbacks.loss_spike_guard')
        self.guard = SpikeGuard(cfg.detector())
        self.rollback_skip_batches, self.log_window = cfg.rollback_skip_batches, cfg.log_window
        self._skip_left = 0
        self._loss_acc: Optional[torch.Tensor] = None
        self._samples = 0
        self._batch_samples = 0
        self._gsq: Optional[torch.Tensor] = None
        self._pending_rollback: Optional[int] = None
        self._lr_restore: list = []
        self._ckpts: dict[str, int] = {}   # checkpoint path (rank 0) -> batch it was saved at
        self.last_decision: Optional[Decision] = None   # the guard's decision on the last batch

    # ------------------------------------------------------------------------------ setup / resume
    def fit_start(self, state: State, logger: Logger) -> None:
        if self.guard.cfg.wants_rollback and _checkpoint_saver(state) is None:
            raise UserError("loss_spike_guard: action 'rollback' needs checkpoints; set save_folder and "
                            "save_interval (e.g. 50ba), or drop 'rollback' from actions")

    def state_dict(self) -> dict[str, Any]:
        return {'guard': self.guard.state_dict(), 'skip_left': self._skip_left}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.guard.load_state_dict(state.get('guard', {}))
        self._skip_left = int(state.get('skip_left', 0))

    # ------------------------------------------------------------------------------ accumulate
    def batch_start(self, state: State, logger: Logger) -> None:
        saver = _checkpoint_saver(state)
        if saver is not None:  # checkpoints saved since the last batch were saved at this timestamp
            for p in saver.saved_checkpoints:
                if str(p) not in self._ckpts:   # a sealed checkpoint knows its own step (older ones of a resumed run)
                    self._ckpts[str(p)] = _saved_batch(p, int(state.timestamp.batch))

    def before_train_batch(self, state: State, logger: Logger) -> None:
        self._loss_acc, self._samples, self._gsq = None, 0, None
        self._batch_samples = _num_samples(state.batch)

    def after_loss(self, state: State, logger: Logger) -> None:
        loss = state.loss
        if isinstance(loss, dict):
            loss = loss['total'] if 'total' in loss else sum(v.mean() for v in loss.values())
        elif isinstance(loss, (list, tuple)):
            loss = sum(x.mean() for x in loss)
        n = _num_samples(state.batch)
        val = loss.detach().float().mean() * n
        self._loss_acc = val if self._loss_acc is None else self._loss_acc + val
        self._samples += n

    def after_backward(self, state: State, logger: Logger) -> None:
        if self._samples < self._batch_samples:
            return  # not the last microbatch: gradients are not complete yet
        grads = [p.grad.detach() for p in _params(state) if p.grad is not None]
        # one fused kernel per dtype/device group, as clip_grad_norm_ does; no host sync here
        self._gsq = torch.stack(torch._foreach_norm(grads)).float().pow(2).sum() if grads else None

    # ------------------------------------------------------------------------------ decide
    def after_train_batch(self, state: State, logger: Logger) -> None:
        if self._loss_acc is None:
            return
        world = dist.get_world_size()
        dev = self._loss_acc.device
        gsq = self._gsq if self._gsq is not None else torch.zeros((), device=dev)
        if not state.fsdp_enabled:
            gsq = gsq / world  # DDP: gradients are already identical on every rank
        buf = torch.stack([self._loss_acc.reshape(()), torch.tensor(float(self._samples), device=dev),
                           gsq.reshape(()).to(dev)])
        dist.all_reduce(buf, reduce_operation='SUM')
        loss_sum, samples, gsq_all = buf.tolist()
        loss = loss_sum / max(samples, 1.0)
        gnorm = gsq_all ** 0.5 if self._gsq is not None else None
        step = int(state.timestamp.batch)
        d = self.guard.observe(step, loss, gnorm)
        self.last_decision = d
        skip = d.skip_step
        if self._skip_left > 0:
            self._skip_left -= 1
            skip = True
        if d.spike:
            self._report(d, state, logger)
        if d.action == 'stop' and d.spike:
            raise SpikeStop(self.guard.stop_message(d))
        if d.action == 'rollback' and d.spike:
            self._pending_rollback = d.rollback_to
        if skip:
            for p in _params(state):
                p.grad = None
            return
        scale = self.guard.lr_scale(step)
        if scale < 1.0:
            for opt in state.optimizers:
                for g in opt.param_groups:
                    self._lr_restore.append((g, g['lr'], g['lr'] * scale))
                    g['lr'] = g['lr'] * scale
            logger.log_metrics({'loss_spike/lr_scale': scale})

    def _report(self, d, state: State, logger: Logger) -> None:
        ts = state.timestamp
        n = self._samples_global(state)
        if dist.get_global_rank() == 0:
            gn = 'n/a' if d.grad_norm is None else f'{d.grad_norm:.4g}'
            log.warning(f'loss_spike_guard: spike at step {d.step} ({d.reason}): loss {d.loss:.4g} vs median '
                        f'{d.loss_median:.4g} (z {d.loss_z:.1f}), grad norm {gn}; action {d.action} '
                        f'(spike {d.incident_spikes} of this incident); epoch {int(ts.epoch)} samples '
                        f'[{int(ts.sample_in_epoch)}, {int(ts.sample_in_epoch) + n}) of the epoch order; '
                        f'recent losses {[round(x, 4) for x in self.guard.recent_losses(self.log_window)]}')
        logger.log_metrics({**self.guard.metrics(), 'loss_spike/spike_loss': d.loss,
                            'loss_spike/spike_action': ['log', 'skip', 'cooldown', 'rollback', 'stop'].index(d.action)})

    @staticmethod
    def _samples_global(state: State) -> int:
        return _num_samples(state.batch) * dist.get_world_size()

    # ------------------------------------------------------------------------------ after the step
    def batch_end(self, state: State, logger: Logger) -> None:
        for g, orig, scaled in self._lr_restore:
            if g['lr'] == scaled:  # no scheduler reset it: put the unscaled LR back
                g['lr'] = orig
        self._lr_restore = []
        if self._pending_rollback is not None:
            target, self._pending_rollback = self._pending_rollback, None
            self._rollback(state, logger, target)

    def _choose_checkpoint(self, target: int) -> Optional[tuple[str, int]]:
        ok = [(b, p) for p, b in self._ckpts.items() if b <= target and os.path.exists(p)]
        if not ok:
            return None
        b, p = max(ok)
        return p, b

    def _rollback(self, state: State, logger: Logger, target: int) -> None:
        box = [self._choose_checkpoint(target) if dist.get_global_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0)
        choice = box[0]
        step = int(state.timestamp.batch)
        if choice is None:
            if dist.get_global_rank() == 0:
                log.warning(f'loss_spike_guard: rollback at step {step}: no checkpoint saved at or before step '
                            f'{target} is left; the step was skipped instead (save more often: save_interval)')
            self.guard.rollback_done(False)
            return
        path, ckpt_batch = choice
        try:
            sd = safeload.load_checkpoint(path, map_location='cpu')['state']   # verified, weights_only
        except UserError as e:   # damaged since it was written: skip the step instead
            if dist.get_global_rank() == 0:
                log.warning(f'loss_spike_guard: rollback at step {step} skipped: {e}')
            self.guard.rollback_done(False)
            return
        sd.pop('algorithms', None)
        state.load_model_state(sd, logger, strict=True)
        state.load_optim_state(sd)
        self._skip_left = self.rollback_skip_batches
        self.guard.rollback_done(True)
        if dist.get_global_rank() == 0:
            log.warning(f'loss_spike_guard: rolled back at step {step} to the checkpoint of step {ckpt_batch} '
                        f'({os.path.basename(path)}); data of steps {ckpt_batch}..{step - 1} is skipped'
                        + (f', and the next {self.rollback_skip_batches} batches too' if self.rollback_skip_batches
                           else ''))
        logger.log_metrics({**self.guard.metrics(), 'loss_spike/rollback_to': ckpt_batch})

    def fit_end(self, state: State, logger: Logger) -> None:
        logger.log_metrics(self.guard.metrics())


class SpikeInjector(Callback):
    """Deliberate spikes, for tests and experiments (``inject_spike``).

    ``poison_steps``: at these steps the batch's labels are replaced by random tokens (a bad-data
    spike: the loss shows it on that step). ``lr_steps``: at these steps the LR is multiplied by
    ``lr_factor`` for one update (an optimizer blow-up: the damage shows on the next steps).
    """

    def __init__(self, **options: Any) -> None:
        cfg = parse(InjectSpikeConfig, options, 'callbacks.inject_spike')
        self.poison_steps, self.lr_steps = set(cfg.poison_steps or ()), set(cfg.lr_steps or ())
        self.lr_factor, self.seed = cfg.lr_factor, cfg.seed

    def after_dataloader(self, state: State, logger: Logger) -> None:
        step = int(state.timestamp.batch)
        if step in self.poison_steps and isinstance(state.batch, dict) and 'input_ids' in state.batch:
            g = torch.Generator().manual_seed(self.seed + step)
            ids = state.batch['input_ids']
            vocab = int(getattr(getattr(state.model, 'config', None), 'vocab_size', 0) or ids.max().item() + 1)
            state.batch['labels'] = torch.randint(0, vocab, ids.shape, generator=g).to(ids.device)
            logger.log_metrics({'loss_spike/injected': 1})

    def after_train_batch(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) in self.lr_steps:
            for opt in state.optimizers:
                for g in opt.param_groups:
                    g['lr'] = g['lr'] * self.lr_factor  # the scheduler resets it after this step
            logger.log_metrics({'loss_spike/injected': 2})
