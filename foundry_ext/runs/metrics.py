"""`metrics_jsonl`: a Composer logger that appends every logged metric to a jsonl file.

Registered in ``llmfoundry_loggers``; ``foundry_ext report`` reads its output. One line per
``log_metrics`` call: ``{"step": <batch>, "<metric>": <value>, ...}``; rank 0 only.

One run, one file, no step twice: the logger's ``state_dict`` (saved in every checkpoint) holds the
file's length at that moment. A run resumed from a checkpoint cuts the lines logged after it (the
steps it is about to redo) before it logs again; a run that starts from step 0 starts the file anew.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Optional, TextIO

from composer.loggers import LoggerDestination
from composer.utils import dist

from foundry_ext.runs.redact import redact

log = logging.getLogger('foundry_ext')

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
        self._base: Optional[int] = None           # file length when this process first opened it
        self._resume: Optional[dict[str, Any]] = None
        self._live = False   # the Trainer has loaded (after_load): this run's outputs may change the folder
        self._eval_start: Optional[int] = None   # file length when the evaluation in progress began

    def _open(self) -> Optional[TextIO]:
        if self._file is None and dist.get_global_rank() == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, 'a', encoding='utf-8')
            if self._base is None:
                self._base = self._file.tell()
        return self._file

    # ------------------------------------------------------------------------------ resumption
    def state_dict(self) -> dict[str, Any]:
        if dist.get_global_rank() != 0:
            return {}
        if self._file is not None:
            self._file.flush()
        size = self.path.stat().st_size if self.path.exists() else 0
        # A checkpoint written in the middle of an evaluation (a preemption stop) ends before it: the
        # next start replays the whole round, so the metrics of its finished evaluators are not kept twice.
        return {'path': str(self.path.resolve()), 'bytes': size if self._eval_start is None else self._eval_start}

    def eval_before_all(self, state, logger) -> None:
        if dist.get_global_rank() == 0:
            if self._file is not None:
                self._file.flush()
            self._eval_start = self.path.stat().st_size if self.path.exists() else 0

    def eval_after_all(self, state, logger) -> None:
        self._eval_start = None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = dict(state)

    def after_load(self, state, logger) -> None:
        """Drop what an earlier attempt logged past the checkpoint this run starts from (all of it
        for a run from step 0), keeping anything this process logged already."""
        self._live = True
        if dist.get_global_rank() != 0:
            return
        if self._hparams:
            self._write_hparams()
        if not self.path.exists():
            return
        base = self._base if self._base is not None else self.path.stat().st_size
        if self._resume is None:
            keep = 0
        elif self._resume.get('path') == str(self.path.resolve()) and isinstance(self._resume.get('bytes'), int):
            keep = min(int(self._resume['bytes']), base)
        else:
            return   # resumed from a checkpoint that does not know this file: append (report dedupes)
        if keep < base:
            self._cut(keep, base)
            log.info(f'metrics_jsonl: {self.path}: dropped {base - keep} bytes logged after the checkpoint '
                     f'this run starts from')

    def _cut(self, start: int, end: int) -> None:
        """Remove bytes [start, end) of the file (atomically: temp file + rename)."""
        if self._file is not None:
            self._file.flush()
        data = self.path.read_bytes()
        tmp = self.path.with_name(self.path.name + '.tmp')
        tmp.write_bytes(data[:start] + data[end:])
        os.replace(tmp, self.path)
        if self._file is not None:
            self._file.close()
            self._file = open(self.path, 'a', encoding='utf-8')
        self._base = start

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        f = self._open()
        if f is None:
            return
        f.write(json.dumps({'step': step, **{k: _plain(v) for k, v in metrics.items()}}) + '\n')
        f.flush()

    def log_hyperparameters(self, hyperparameters: dict[str, Any]) -> None:
        # Written once the run has loaded its checkpoint (after_load): a run that fails while it is
        # being built leaves the folder's hparams.json (and metrics.jsonl) as they were.
        if dist.get_global_rank() == 0:
            self._hparams.update(hyperparameters)
            if self._live:
                self._write_hparams()

    def _write_hparams(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name('hparams.json.tmp')
        tmp.write_text(json.dumps(redact(self._hparams), default=str, indent=1))   # never a secret
        os.replace(tmp, self.path.with_name('hparams.json'))

    def close(self, state, logger) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
