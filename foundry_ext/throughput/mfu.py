"""MFU arithmetic, pure Python: throughput and FLOP utilisation from counted tokens and seconds.

The convention (docs/mfu.md): model FLOPs per token = 6·N_active + 12·n_layers·d_attn·seq (no causal
halving; ``flops_per_token_causal`` is the causal-exact variant); MFU = model FLOP/s per device /
peak FLOP/s per device; HFU counts the recomputed forward of activation checkpointing (x 4/3).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class FlopsRate:
    """What one device is asked to do and can do."""
    flops_per_token: float          # the convention
    flops_per_token_causal: float   # causal-exact attention
    peak: float                     # FLOP/s per device
    hfu_factor: float = 1.0         # 4/3 with activation checkpointing


def mfu_metrics(rate: FlopsRate, d_tokens: int, d_seconds: float, world: int,
                elapsed_fraction: Optional[float] = None, wall_seconds: float = 0.0,
                usd_per_gpu_hour: Optional[float] = None) -> dict[str, float]:
    """``throughput/*`` and ``mfu/*`` metrics for ``d_tokens`` trained (all ranks) in ``d_seconds``.

    ``elapsed_fraction`` (of the whole run, in (0, 1]) and ``wall_seconds`` so far add the ETA and
    the projected device hours (and cost, with ``usd_per_gpu_hour``)."""
    tps = d_tokens / d_seconds
    per_dev = tps / world
    model_flops = per_dev * rate.flops_per_token
    m = {'throughput/tokens_per_sec': tps, 'throughput/device/tokens_per_sec': per_dev,
         'mfu/model_tflops_per_device': model_flops / 1e12,
         'mfu/mfu': model_flops / rate.peak, 'mfu/mfu_causal': per_dev * rate.flops_per_token_causal / rate.peak,
         'mfu/hfu': model_flops * rate.hfu_factor / rate.peak}
    if elapsed_fraction is not None and 0 < elapsed_fraction <= 1:
        total = wall_seconds / elapsed_fraction
        m['mfu/eta_s'] = total - wall_seconds
        m['mfu/projected_device_hours'] = total * world / 3600.0
        if usd_per_gpu_hour is not None:
            m['mfu/projected_cost_usd'] = m['mfu/projected_device_hours'] * usd_per_gpu_hour
    return m
