"""`gauntlet`: a Composer callback that runs the gauntlet every N batches during training.

Registered in ``llmfoundry_callbacks``, so an LLM Foundry yaml can say::

    callbacks:
      gauntlet: {icl_tasks: eval/starter/tasks.yaml, eval_gauntlet: eval/starter/gauntlet.yaml, interval: 100ba}

and the run logs ``gauntlet/<task>/<k>-shot``, ``gauntlet/category/<name>`` and
``gauntlet/average/<name>``. A thin adapter over :mod:`foundry_ext.gauntlet.runner`. In a multi-GPU
run each rank scores its share of the examples; under FSDP the ranks call the sharded model in
lockstep (:mod:`foundry_ext.gauntlet.shard`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from composer.core import Callback, State
from composer.loggers import Logger

from foundry_ext.gauntlet import composite as comp
from foundry_ext.gauntlet.config import GauntletCallbackConfig, RunOptions
from foundry_ext.gauntlet.models import wrap
from foundry_ext.gauntlet.results import GauntletResults
from foundry_ext.gauntlet.runner import parse_tasks, run_gauntlet
from foundry_ext.gauntlet.shard import Shard
from foundry_ext.gauntlet.tasks import load_tasks_file
from foundry_ext.validation import parse

log = logging.getLogger(__name__)


def metrics_from_results(results: GauntletResults) -> dict[str, float]:
    """``gauntlet/<task>/<k>-shot`` (+ ``/<category>`` of has_categories tasks), ``gauntlet/category/<name>``,
    ``gauntlet/average/<name>``; composite entries that are n/a are not logged."""
    return results.metrics('gauntlet')


class GauntletCallback(Callback):
    """Options: :class:`foundry_ext.gauntlet.config.GauntletCallbackConfig`."""

    def __init__(self, **options: Any) -> None:
        self.cfg = parse(GauntletCallbackConfig, options, 'callbacks.gauntlet')
        src = self.cfg.icl_tasks
        raw = load_tasks_file(src) if isinstance(src, str) else list(src or [])
        if self.cfg.limit:
            raw = [{**t, 'limit': self.cfg.limit} if isinstance(t, dict) else t for t in raw]
        base = str(Path(src).parent) if isinstance(src, str) else None
        self.tasks, errors = parse_tasks(raw, base)
        for e in errors:
            log.warning('gauntlet: %s', e)
        self.gauntlet = comp.parse_gauntlet(self.cfg.eval_gauntlet) if self.cfg.eval_gauntlet else None
        self.every = self.cfg.interval_batches
        self._last = -1

    def _run(self, state: State, logger: Logger) -> None:
        step = int(state.timestamp.batch)
        if step == self._last:
            return
        self._last = step
        model = state.model.module if hasattr(state.model, 'module') else state.model
        hf, tok = getattr(model, 'model', model), getattr(model, 'tokenizer', None)
        if tok is None:
            log.warning('gauntlet: the model has no tokenizer; skipped')
            return
        was_training = hf.training
        device = next(hf.parameters()).device
        msl = self.cfg.max_seq_len or getattr(getattr(hf, 'config', None), 'max_seq_len', None)
        lm = wrap(hf, tok, f'step {step}', msl, model_hash='training', device=str(device))
        shard = Shard.detect(lockstep=bool(getattr(state, 'fsdp_enabled', False)))
        opts = RunOptions(batch_rows=self.cfg.batch_size, bootstrap_samples=0)
        try:
            with torch.no_grad():
                results = run_gauntlet(lm, self.tasks, self.gauntlet, opts,
                                       log=lambda s: log.info('gauntlet: %s', s), shard=shard)
        finally:
            hf.train(was_training)
        for e in results.errors if shard.rank == 0 else ():
            log.warning('gauntlet: %s', e)
        logger.log_metrics(metrics_from_results(results))

    def batch_end(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) % self.every == 0:
            self._run(state, logger)

    def fit_end(self, state: State, logger: Logger) -> None:
        if self.cfg.eval_at_fit_end:
            self._run(state, logger)
