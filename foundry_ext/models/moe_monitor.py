"""``moe_monitor`` callback: per-layer expert balance and dropped tokens of the torch_dmoe layers.

Logs after each batch (every ``log_interval`` batches): ``moe/layer<i>/max_load`` (busiest expert's share
of assignments x num_experts: 1.0 is perfectly balanced), ``moe/layer<i>/dropped_frac``, ``moe/lbl`` and
``moe/z_loss`` (unweighted, mean over layers), and with ``per_expert: true`` the share of every expert.
"""
from __future__ import annotations

from typing import Any

from composer.core import Callback, State
from composer.loggers import Logger

from foundry_ext.models.config import MoEMonitorConfig
from foundry_ext.models.moe import DroplessMoE
from foundry_ext.validation import parse


def moe_metrics(layers: list[DroplessMoE], per_expert: bool = False) -> dict[str, float]:
    """Pure helper (tested directly): metrics from the stats of the last forward."""
    out: dict[str, float] = {}
    lbl, z = [], []
    for i, m in enumerate(layers):
        s = m.stats
        if s is None:
            continue
        share = s.tokens_per_expert.float() / max(1, s.assignments)
        out[f'moe/layer{i}/max_load'] = float(share.max()) * m.num_experts
        out[f'moe/layer{i}/dropped_frac'] = s.dropped / max(1, s.assignments)
        if per_expert:
            for e, v in enumerate(share.tolist()):
                out[f'moe/layer{i}/expert{e}'] = v
        lbl.append(float(s.lbl))
        z.append(float(s.z_loss))
    if lbl:
        out['moe/lbl'] = sum(lbl) / len(lbl)
        out['moe/z_loss'] = sum(z) / len(z)
    return out


class MoEMonitor(Callback):
    def __init__(self, **options: Any):
        cfg = parse(MoEMonitorConfig, options, 'callbacks.moe_monitor')
        self.log_interval, self.per_expert = cfg.log_interval, cfg.per_expert

    def batch_end(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) % self.log_interval:
            return
        layers = [m for m in state.model.modules() if isinstance(m, DroplessMoE)]
        metrics = moe_metrics(layers, self.per_expert)
        if metrics:
            logger.log_metrics(metrics)
