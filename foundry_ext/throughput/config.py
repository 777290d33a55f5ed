"""Typed options of the ``mfu_monitor`` callback (no torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from foundry_ext.errors import UserError
from foundry_ext.throughput import hardware
from foundry_ext.validation import section


@dataclass
class MFUConfig:
    log_interval: int = 10                      # log every this many batches
    peak_flops: Optional[float] = None          # peak FLOP/s per device (wins over everything)
    device: Optional[str] = None                # a name from the peak table (h100-sxm, a100, ...)
    usd_per_gpu_hour: Optional[float] = None    # also log the projected cost of the whole run
    flops_per_token: Optional[float] = None     # override the analytic value (training FLOPs per token)
    probe_seconds: float = 0.3                  # matmul probe duration on unknown hardware (cached)

    def __post_init__(self) -> None:
        where = section('mfu_monitor')
        if self.log_interval < 1:
            raise UserError(f'{where}: log_interval must be an integer >= 1, got {self.log_interval!r}')
        if self.usd_per_gpu_hour is not None and self.usd_per_gpu_hour < 0:
            raise UserError(f'{where}: usd_per_gpu_hour must be a number >= 0, got {self.usd_per_gpu_hour!r}')
        if self.flops_per_token is not None and self.flops_per_token <= 0:
            raise UserError(f'{where}: flops_per_token must be > 0, got {self.flops_per_token!r}')
        if self.probe_seconds <= 0:
            raise UserError(f'{where}: probe_seconds must be > 0, got {self.probe_seconds!r}')
        try:
            if self.device is not None:
                hardware.table_peak(self.device, 'fp32')   # unknown name -> one line now, not mid-run
            if self.peak_flops is not None:
                hardware.peak_flops(peak=self.peak_flops)
        except UserError as e:
            raise UserError(f'{where}: {e}') from None
