"""`sft_monitor`: what the SFT batches train on, as metrics (``ft/...``), every ``log_interval`` batches.

* ``ft/trained_token_fraction``: loss tokens (labels != -100 after the first position) / token slots;
* ``ft/padding_fraction``: padded slots / token slots;
* ``ft/examples_per_row``: examples per row (packing);
* ``ft/trained_tokens``: loss tokens of the batch; ``ft/trained_tokens_total``: since the start.

Summed over all ranks. Options: :class:`~foundry_ext.finetune.config.SFTMonitorConfig`.
"""
from __future__ import annotations

from typing import Any

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from foundry_ext.finetune.config import SFTMonitorConfig
from foundry_ext.validation import parse


def batch_counts(batch: dict[str, Any]) -> torch.Tensor:
    """[trained tokens, real tokens, token slots, examples, rows] of one batch (float64)."""
    labels, mask = batch['labels'], batch['attention_mask']
    seq = batch.get('sequence_id')
    rows = labels.shape[0]
    examples = rows if seq is None else int((seq.max(dim=-1).values + 1).clamp(min=0).sum())
    return torch.tensor([float((labels[:, 1:] != -100).sum()), float(mask.sum()), float(mask.numel()),
                         float(examples), float(rows)], dtype=torch.float64)


class SFTMonitor(Callback):
    def __init__(self, **options: Any):
        self.cfg = parse(SFTMonitorConfig, options, 'callbacks.sft_monitor')
        self.total = 0.0

    def after_dataloader(self, state: State, logger: Logger) -> None:
        batch = state.batch
        if not isinstance(batch, dict) or 'labels' not in batch or 'attention_mask' not in batch:
            return
        c = batch_counts(batch)
        t = state.device.tensor_to_device(c)
        dist.all_reduce(t, reduce_operation='SUM')
        c = t.cpu()
        self.total += float(c[0])
        if int(state.timestamp.batch) % self.cfg.log_interval:
            return
        trained, real, slots, examples, rows = (float(x) for x in c)
        logger.log_metrics({'ft/trained_token_fraction': trained / max(slots, 1),
                            'ft/padding_fraction': 1 - real / max(slots, 1),
                            'ft/examples_per_row': examples / max(rows, 1),
                            'ft/trained_tokens': trained, 'ft/trained_tokens_total': self.total})

    def state_dict(self) -> dict[str, Any]:
        return {'total': self.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total = float(state.get('total', 0.0))
