"""``model_check`` callback: total / trainable parameters at ``Event.INIT``; at ``Event.BEFORE_LOAD``
whether the ``load_path`` checkpoint fits the model (:func:`foundry_ext.checkpoint.fit.first_mismatch`),
before Composer's own load turns a mismatch into a multi-line ``RuntimeError`` or, non-strict, silently
keeps random weights. Registered in ``llmfoundry_callbacks``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from composer.core import Callback, Event, State
from composer.loggers import Logger
from composer.utils import dist

from foundry_ext.checkpoint.fit import ModelCheckConfig, Shape, first_mismatch, parameter_line
from foundry_ext.checkpoint.load import checkpoint_shapes, is_sharded
from foundry_ext.errors import UserError
from foundry_ext.validation import parse

__all__ = ['ModelCheck']


class ModelCheck(Callback):
    """``model_check``: options :class:`~foundry_ext.checkpoint.fit.ModelCheckConfig`."""

    def __init__(self, **options: Any) -> None:
        self.cfg = parse(ModelCheckConfig, options, 'callbacks.model_check')
        self._shapes: dict[str, Shape] = {}
        self._peft = False

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.INIT:
            model = state.model
            # every tensor, not HuggingFaceModel.state_dict()'s adapter-only view
            self._shapes = {k: tuple(v.shape) for k, v in torch.nn.Module.state_dict(model).items()}
            self._peft = bool(getattr(model, 'using_peft', False))
            if self.cfg.print_parameters and dist.get_global_rank() == 0:
                print(f'foundry_ext: {parameter_line(model)}', flush=True)
        elif event == Event.BEFORE_LOAD and self.cfg.load_path and self._shapes:
            self.check(self.cfg.load_path)

    def check(self, load_path: str) -> None:
        p = Path(load_path)
        if '://' in load_path or not (p.is_file() or is_sharded(p)):
            return  # remote or absent: Composer reports those itself
        line = first_mismatch(checkpoint_shapes(p), self._shapes, self.cfg.strict, self.cfg.ignore_keys, self._peft)
        if line:
            raise UserError(f'load_path {load_path}: {line}')
