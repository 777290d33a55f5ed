"""The Trainer that LLM Foundry's ``train()`` builds under ``foundry-ext train``.

A Composer ``Trainer`` with three changes, all about resuming:

* an evaluation a preemption cut short (``pending_eval`` in the checkpoint's manifest) runs first,
  with the same timestamps, so the evaluators that were due at that step are the ones that run
  and the metrics land at the same step as in an uninterrupted run;
* a run that is already finished returns from ``fit()`` at once (Composer raises "max_duration ...
  is less than or equal to the elapsed training duration");
* a checkpoint that does not fit the model ("size mismatch for ...") is one line naming the file.

:func:`train` runs ``llmfoundry.command_utils.train`` with this class in place of ``Trainer``
(LLM Foundry 0.22 constructs ``Trainer`` from its module namespace).
"""
from __future__ import annotations

import contextlib
import logging
import re
from typing import Any, Iterator, Optional

from composer import Trainer
from composer.core import Event, Timestamp

from foundry_ext.safeload import CheckpointError

log = logging.getLogger('foundry_ext')

__all__ = ['ResumableTrainer', 'train']

_MISMATCH = re.compile(r'size mismatch for ([^:]+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from '
                       r'checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)')


def mismatch_message(err: BaseException, path: Optional[str]) -> Optional[str]:
    """One line for a ``load_state_dict`` error of a checkpoint that belongs to another model."""
    s = str(err)
    if 'Error(s) in loading state_dict' not in s:
        return None
    where = f'checkpoint {path}' if path else 'the checkpoint'
    sizes = _MISMATCH.findall(s)
    if sizes:
        name, ck, here = sizes[0]
        more = f' ({len(sizes) - 1} more tensors differ)' if len(sizes) > 1 else ''
        return (f'{where} was written by a different model: {name} is [{ck}] in the checkpoint but [{here}] '
                f'here{more}; load it with the model config that wrote it, or use a new run_name to start over')
    keys = re.search(r'(Missing key\(s\)|Unexpected key\(s\)) in state_dict: ([^\n]*)', s)
    if keys:
        listed = keys.group(2).strip().rstrip('.')
        return (f'{where} was written by a different model: {keys.group(1).lower()} in state_dict: {listed[:120]}'
                f'{"..." if len(listed) > 120 else ""}; load it with the model config that wrote it')
    return f'{where} does not fit this model ({s.splitlines()[0][:160]})'


class ResumableTrainer(Trainer):
    pending_eval: Optional[dict] = None    # set by the train command from the checkpoint's manifest
    load_path_hint: Optional[str] = None   # the checkpoint the command chose (for messages)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except RuntimeError as e:
            msg = mismatch_message(e, kwargs.get('load_path') or type(self).load_path_hint)
            if msg is None:
                raise
            raise CheckpointError(msg) from None

    def _finished(self) -> bool:
        md = self.state.max_duration
        return md is not None and md <= self.state.timestamp.get(md.unit)

    def fit(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        p, cls.pending_eval = cls.pending_eval, None
        plain = not args and not kwargs
        if plain and p is not None and int(self.state.timestamp.batch) == int(p.get('batch', -1)):
            self._replay(p)
        if plain and self._finished():
            log.info('foundry_ext: the run is at max_duration %s; nothing to train', self.state.max_duration)
            return
        super().fit(*args, **kwargs)

    def _replay(self, p: dict) -> None:
        """Run the evaluation round the stop interrupted, as the train loop would have."""
        prev = p.get('previous_timestamp')
        if prev is not None:
            ts = Timestamp()
            ts.load_state_dict({**self.state.timestamp.state_dict(), **prev})
            self.state.previous_timestamp = ts
        event = Event[p.get('event', 'BATCH_END')]
        for cb in self.state.callbacks:
            if hasattr(cb, 'last_event') and type(cb).__name__ == 'Preemption':
                cb.last_event = event.name
        self._run_evaluators(event)   # Composer's own: the evaluators whose interval is due then


@contextlib.contextmanager
def _as_llmfoundry_trainer() -> Iterator[Any]:
    import importlib
    lf_train: Any = importlib.import_module('llmfoundry.command_utils.train')   # the module (its package re-exports
    # a function of the same name)
    if getattr(lf_train, 'Trainer', None) is not Trainer:
        raise RuntimeError('llmfoundry.command_utils.train no longer builds composer.Trainer by name; '
                           'foundry_ext.checkpoint.trainer supports LLM Foundry 0.22 only')
    lf_train.Trainer = ResumableTrainer
    try:
        yield lf_train
    finally:
        lf_train.Trainer = Trainer


def train(cfg: dict[str, Any], pending_eval: Optional[dict] = None, load_path: Optional[str] = None) -> Any:
    """LLM Foundry's ``train(cfg)`` with :class:`ResumableTrainer`."""
    from omegaconf import OmegaConf as om
    ResumableTrainer.pending_eval = pending_eval
    ResumableTrainer.load_path_hint = load_path
    with _as_llmfoundry_trainer() as lf_train:
        return lf_train.train(om.create(cfg))
