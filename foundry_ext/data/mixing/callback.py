"""`mix_logger`: the Composer side of the `mixture` loader (registered in ``llmfoundry_callbacks``).

Each batch it computes the per-sample training loss per stream from the model outputs
(the batch carries ``domain``), sums it over ranks, and

* feeds it to the adaptive controller when the loader has ``adaptive`` set (weights then
  move from the training loss; see :class:`foundry_ext.data.mixing.adaptive.Adaptive`);
* logs, every ``log_interval`` batches, for each stream ``<s>``:
  ``mix/<s>/weight`` (weight used for the batch, adaptive included),
  ``mix/<s>/planned`` (the schedule's weight), ``mix/<s>/realized`` (share of the samples of
  the batches since the last log), ``mix/<s>/tokens`` and ``mix/<s>/target_tokens`` (consumed
  vs expected from the weights), ``mix/<s>/epochs`` (completed passes over the stream) and
  ``mix/<s>/train_loss``. A new epoch of a stream is also printed once.

``record_samples: <path>`` writes every consumed ``(step, global_index, stream, sample_id)``
to ``<path>.rank<r>.jsonl`` (used by the resumption tests).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional, TextIO

import numpy as np
import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from foundry_ext.data.mixing.config import MixLoggerConfig
from foundry_ext.data.mixing.mixer import Mixer
from foundry_ext.errors import UserError
from foundry_ext.validation import parse

log = logging.getLogger(__name__)


def _find_mixture(state: State) -> tuple[Any, Mixer]:
    dl = state.train_dataloader
    ds = getattr(dl, 'dataset', None)
    mixer = getattr(ds, 'mixer', None)
    if mixer is None:
        raise UserError('the mix_logger callback needs train_loader.name: mixture')
    return ds, mixer


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each sample (labels as in the batch, shifted here)."""
    targets = torch.roll(labels, shifts=-1, dims=1)
    targets[:, -1] = -100
    ce = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                           ignore_index=-100, reduction='none').view(targets.shape)
    valid = (targets != -100).float()
    return (ce * valid).sum(1) / valid.sum(1).clamp_min(1)


class MixLogger(Callback):

    """Options: :class:`~foundry_ext.data.mixing.config.MixLoggerConfig`."""

    def __init__(self, **options: Any) -> None:
        cfg = parse(MixLoggerConfig, options, 'callbacks.mix_logger')
        self.log_interval = cfg.log_interval
        self.record_samples = cfg.record_samples
        self._mixer: Optional[Mixer] = None
        self._loss_sum = torch.zeros(0, dtype=torch.float64)   # per stream, sized in fit_start
        self._loss_cnt = torch.zeros(0, dtype=torch.float64)
        self._last_counts: Optional[np.ndarray] = None
        self._epochs_logged: Optional[np.ndarray] = None
        self._rec: Optional[TextIO] = None

    def fit_start(self, state: State, logger: Logger) -> None:
        _, self._mixer = _find_mixture(state)
        k = len(self._mixer.streams)
        self._loss_sum = torch.zeros(k, dtype=torch.float64)
        self._loss_cnt = torch.zeros(k, dtype=torch.float64)
        self._last_counts = None
        self._epochs_logged = None
        if self.record_samples:
            p = Path(f'{self.record_samples}.rank{dist.get_global_rank()}.jsonl')
            p.parent.mkdir(parents=True, exist_ok=True)
            self._rec = open(p, 'a', encoding='utf-8')

    def after_dataloader(self, state: State, logger: Logger) -> None:
        if self._mixer is None or 'domain' not in state.batch:
            return
        if self._rec is not None:
            step = int(state.timestamp.batch)
            rec = {'step': step, 'global_index': state.batch['global_index'].tolist(),
                   'stream': state.batch['domain'].tolist(), 'sample_id': state.batch['sample_id'].tolist()}
            self._rec.write(json.dumps(rec) + '\n')
            self._rec.flush()

    def after_forward(self, state: State, logger: Logger) -> None:
        if self._mixer is None or 'domain' not in state.batch or 'labels' not in state.batch:
            return
        out = state.outputs
        logits = out if isinstance(out, torch.Tensor) else getattr(out, 'logits', None)
        if logits is None:
            return
        with torch.no_grad():
            loss = per_sample_loss(logits.detach(), state.batch['labels']).double().cpu()
            d = state.batch['domain'].cpu()
            self._loss_sum.index_add_(0, d, loss)
            self._loss_cnt.index_add_(0, d, torch.ones_like(loss))

    def batch_end(self, state: State, logger: Logger) -> None:
        m = self._mixer
        if m is None:
            return
        step = int(state.timestamp.batch) - 1          # the batch just trained (global batch index)
        both = torch.cat([self._loss_sum, self._loss_cnt])
        if dist.get_world_size() > 1:
            dist.all_reduce(both)
        k = len(m.streams)
        sums, cnts = both[:k].numpy(), both[k:].numpy()
        self._loss_sum.zero_()
        self._loss_cnt.zero_()
        if m.adaptive is not None:
            m.adaptive.observe(step, sums, cnts)
        epochs = m.epochs(m.counts_at(step + 1))
        if self._epochs_logged is not None and dist.get_global_rank() == 0:
            for s, e0, e1 in zip(m.streams, self._epochs_logged, epochs):
                if e1 > e0:
                    log.info(f'mix: stream {s} started epoch {e1} at batch {step + 1}')
                    print(f'foundry_ext: mix: stream {s} exhausted; epoch {e1} starts at batch {step + 1}')
        self._epochs_logged = epochs
        if (step + 1) % self.log_interval:
            return
        seq = m.seq_len
        counts, target = m.counts_at(step + 1), m.target_at(step + 1)
        w, planned = m.weights(step), m.planned_weights(step)
        if self._last_counts is None:
            self._last_counts = m.counts_at(step + 1 - self.log_interval) if step + 1 >= self.log_interval \
                and m.has_state(step + 1 - self.log_interval) else np.zeros_like(counts)
        seen = counts - self._last_counts
        self._last_counts = counts
        total = max(int(seen.sum()), 1)
        metrics: dict[str, Any] = {}
        for i, s in enumerate(m.streams):
            metrics[f'mix/{s}/weight'] = float(w[i])
            metrics[f'mix/{s}/planned'] = float(planned[i])
            metrics[f'mix/{s}/realized'] = float(seen[i] / total)
            metrics[f'mix/{s}/tokens'] = int(counts[i]) * seq
            metrics[f'mix/{s}/target_tokens'] = float(target[i]) * seq
            metrics[f'mix/{s}/epochs'] = int(epochs[i])
            if cnts[i] > 0:
                metrics[f'mix/{s}/train_loss'] = float(sums[i] / cnts[i])
        logger.log_metrics(metrics)

    def fit_end(self, state: State, logger: Logger) -> None:
        if self._rec is not None:
            self._rec.close()
            self._rec = None
