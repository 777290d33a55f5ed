"""`metrics_jsonl`: a Composer logger that appends every logged metric to a jsonl file.

Registered in ``llmfoundry_loggers``; ``foundry_ext report`` reads its output. One line per
``log_metrics`` call: ``{"step": <batch>, "<metric>": <value>, ...}``; rank 0 only.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional, TextIO

from composer.loggers import LoggerDestination
from composer.utils import dist

from foundry_ext.runs.redact import redact


def _plain(v: Any):
    if hasattr(v, 'item') and getattr(v, 'numel', lambda: 1)() == 1:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


class MetricsJsonlLogger(LoggerDestination):

    def __init__(self, folder: str = '.', filename: str = 'metrics.jsonl') -> None:
        super().__init__()
        self.path = Path(folder) / filename
        self._file: Optional[TextIO] = None     # rank 0 only, opened on the first write
        self._hparams: dict[str, Any] = {}

    def _open(self) -> Optional[TextIO]:
        if self._file is None and dist.get_global_rank() == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, 'a', encoding='utf-8')
        return self._file

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        f = self._open()
        if f is None:
            return
        f.write(json.dumps({'step': step, **{k: _plain(v) for k, v in metrics.items()}}) + '\n')
        f.flush()

    def log_hyperparameters(self, hyperparameters: dict[str, Any]) -> None:
        if dist.get_global_rank() == 0:
            self._hparams.update(hyperparameters)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name('hparams.json.tmp')
            tmp.write_text(json.dumps(redact(self._hparams), default=str, indent=1))   # never a secret
            os.replace(tmp, self.path.with_name('hparams.json'))

    def close(self, state, logger) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
