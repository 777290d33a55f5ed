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
from typing import Any, Optional, Union

import torch
from composer.core import Callback, State, Time, TimeUnit
from composer.loggers import Logger

from foundry_ext.errors import UserError
from foundry_ext.gauntlet import composite as comp
from foundry_ext.gauntlet.models import wrap
from foundry_ext.gauntlet.runner import parse_tasks, run_gauntlet
from foundry_ext.gauntlet.shard import Shard
from foundry_ext.gauntlet.tasks import load_tasks_file

log = logging.getLogger(__name__)


def metrics_from_results(results: dict[str, Any]) -> dict[str, float]:
    m = {f'gauntlet/{k}': b['accuracy'] for k, b in results['benchmarks'].items()}
    m.update({f'gauntlet/category/{k}': v['score'] for k, v in results.get('categories', {}).items()})
    m.update({f'gauntlet/average/{k}': v['score'] for k, v in results.get('averages', {}).items()})
    return m


class GauntletCallback(Callback):

    def __init__(self, icl_tasks: Union[str, list], eval_gauntlet: Union[str, dict, None] = None,
                 interval: Union[str, int] = '100ba', max_seq_len: Optional[int] = None,
                 batch_size: int = 64, limit: Optional[int] = None, eval_at_fit_end: bool = True) -> None:
        raw = load_tasks_file(icl_tasks) if isinstance(icl_tasks, str) else list(icl_tasks)
        if limit:
            raw = [{**t, 'limit': limit} for t in raw]
        self.tasks, errors = parse_tasks(raw)
        for e in errors:
            log.warning('gauntlet: %s', e)
        self.gauntlet = comp.parse_gauntlet(eval_gauntlet) if eval_gauntlet else None
        self.interval = Time.from_timestring(interval) if isinstance(interval, str) else Time(interval, TimeUnit.BATCH)
        if self.interval.unit != TimeUnit.BATCH:
            raise UserError(f'gauntlet callback: interval must be in batches (e.g. 100ba), got {interval}')
        self.max_seq_len, self.batch_size, self.eval_at_fit_end = max_seq_len, batch_size, eval_at_fit_end
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
        msl = self.max_seq_len or getattr(getattr(hf, 'config', None), 'max_seq_len', None)
        lm = wrap(hf, tok, f'step {step}', msl,
                  model_hash='training', device=str(device))
        shard = Shard.detect(lockstep=bool(getattr(state, 'fsdp_enabled', False)))
        try:
            with torch.no_grad():
                results = run_gauntlet(lm, self.tasks, self.gauntlet, max_rows=self.batch_size, bootstrap_samples=0,
                                       log=lambda s: log.info('gauntlet: %s', s), shard=shard)
        finally:
            hf.train(was_training)
        for e in results['errors'] if shard.rank == 0 else ():
            log.warning('gauntlet: %s', e)
        logger.log_metrics(metrics_from_results(results))

    def batch_end(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) % int(self.interval.value) == 0:
            self._run(state, logger)

    def fit_end(self, state: State, logger: Logger) -> None:
        if self.eval_at_fit_end:
            self._run(state, logger)
