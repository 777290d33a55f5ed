"""`mfu_monitor`: throughput, MFU, HFU, ETA and projected cost, for any model.

Thin Composer adapter over :mod:`foundry_ext.models.accounting` (FLOPs per token from the model's config, or
measured once with FlopCounterMode for a model it does not know) and :mod:`foundry_ext.throughput.hardware`
(peak FLOP/s: user value > table > a cached matmul probe; never 0).

Every ``log_interval`` batches it logs (tokens are Composer's, already summed over ranks; time is
training wall-clock, evaluation excluded):

``throughput/tokens_per_sec`` (global), ``throughput/device/tokens_per_sec``,
``mfu/model_tflops_per_device``, ``mfu/mfu`` (the convention of docs/mfu.md), ``mfu/mfu_causal``,
``mfu/hfu`` (counts activation-checkpointing recompute), ``mfu/eta_s``, ``mfu/projected_device_hours``
and, with ``usd_per_gpu_hour``, ``mfu/projected_cost_usd``.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from foundry_ext.models import accounting as F
from foundry_ext.throughput import hardware
from foundry_ext.throughput.config import MFUConfig
from foundry_ext.throughput.mfu import FlopsRate, mfu_metrics
from foundry_ext.validation import parse

log = logging.getLogger('foundry_ext')

__all__ = ['MFUMonitor']


def _model_config(state: State) -> Optional[dict]:
    m = state.model
    for _ in range(3):  # DDP wrapper -> Composer model -> HF/MPT model
        cfg = getattr(m, 'config', None)
        if cfg is not None and hasattr(cfg, 'to_dict'):
            return cfg.to_dict()
        m = getattr(m, 'module', None) or getattr(m, 'model', None)
        if m is None:
            break
    return None


def _seq_len(batch: Any) -> Optional[int]:
    if isinstance(batch, dict) and isinstance(batch.get('input_ids'), torch.Tensor):
        return int(batch['input_ids'].shape[-1])
    return None


def _activation_checkpointing(state: State, cfg: Optional[dict]) -> bool:
    fc = getattr(state, 'fsdp_config', None)
    if fc is not None and getattr(fc, 'activation_checkpointing', False):
        return True
    return bool((cfg or {}).get('activation_checkpointing', False))


class MFUMonitor(Callback):
    """Options: :class:`foundry_ext.throughput.config.MFUConfig` (log_interval, peak_flops, device,
    usd_per_gpu_hour, flops_per_token, probe_seconds)."""

    def __init__(self, **options: Any) -> None:
        cfg = parse(MFUConfig, options, 'callbacks.mfu_monitor')
        self.log_interval, self.user_peak, self.device = cfg.log_interval, cfg.peak_flops, cfg.device
        self.usd_per_gpu_hour, self.user_fpt, self.probe_seconds = cfg.usd_per_gpu_hour, cfg.flops_per_token, \
            cfg.probe_seconds
        self.fpt: Optional[float] = None          # convention
        self.fpt_causal: Optional[float] = None
        self.hfu_factor = 1.0
        self.peak: Optional[float] = None
        self.peak_source = ''
        self.flops_source = ''
        self._last: Optional[tuple[int, float]] = None   # (tokens, train wall seconds)
        self.overhead_s = 0.0                            # time spent in this callback (for bench/)

    # ------------------------------------------------------------------------------ setup
    def fit_start(self, state: State, logger: Logger) -> None:
        t0 = time.perf_counter()
        precision = state.precision.value if hasattr(state.precision, 'value') else str(state.precision)
        detected = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        if self.user_peak is not None or self.device or (detected and hardware.device_key(detected)):
            peak, src = hardware.peak_flops(precision, self.device, self.user_peak, detected)
        else:  # unknown hardware: rank 0 measures (ranks on one CPU would slow each other), all use it
            box: list[Optional[tuple[float, str]]] = [None]
            if dist.get_global_rank() == 0:
                box = [hardware.peak_flops(precision, detected=detected or 'cpu',
                                           probe_device='cuda' if detected else 'cpu')]
            dist.broadcast_object_list(box, src=0)
            got = box[0]
            if got is None:   # broadcast_object_list fills it on every rank
                raise RuntimeError('mfu_monitor: rank 0 sent no peak FLOP/s')
            peak, src = got
        self.peak, self.peak_source = peak, src
        self.overhead_s += time.perf_counter() - t0

    def _setup_flops(self, state: State) -> None:
        cfg = _model_config(state)
        seq = _seq_len(state.batch)
        if self.user_fpt is not None:
            self.fpt = self.fpt_causal = float(self.user_fpt)
            self.flops_source = 'user'
        elif cfg is not None and F.is_known_config(cfg):
            b = F.breakdown(cfg, seq)
            self.fpt, self.fpt_causal = b.flops_per_token, b.flops_per_token_causal
            self.flops_source = 'config'
        else:
            self.fpt = self.fpt_causal = self._measure(state)
            self.flops_source = 'flop_counter'
        self.hfu_factor = 4.0 / 3.0 if _activation_checkpointing(state, cfg) else 1.0
        if dist.get_global_rank() == 0:
            log.info(f'mfu_monitor: {self.fpt:.4g} FLOPs/token ({self.flops_source}, seq {seq}), '
                     f'peak {self.peak:.4g} FLOP/s per device ({self.peak_source})')

    def _measure(self, state: State) -> float:
        """FlopCounterMode on one sample of the first batch (forward + backward), grads dropped."""
        batch = state.batch
        one = {k: (v[:1] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()} \
            if isinstance(batch, dict) else batch
        tokens = int(one['input_ids'].numel()) if isinstance(one, dict) and 'input_ids' in one else 1
        model = state.model

        def step():
            out = model(one)
            loss = model.loss(out, one) if hasattr(model, 'loss') else out
            loss = loss['total'] if isinstance(loss, dict) else loss
            loss.sum().backward()
        fpt = F.measure_flops_per_token(step, tokens)
        for p in model.parameters():
            p.grad = None
        return fpt

    # ------------------------------------------------------------------------------ per batch
    def batch_start(self, state: State, logger: Logger) -> None:
        if self.fpt is None:
            t0 = time.perf_counter()
            self._setup_flops(state)
            self.overhead_s += time.perf_counter() - t0

    def batch_end(self, state: State, logger: Logger) -> None:
        t0 = time.perf_counter()
        ts = state.timestamp
        tokens, wall = int(ts.token), ts.total_wct.total_seconds()
        if self._last is None:
            self._last = (tokens, wall)  # the first batch (warm-up, compile) is not measured
        elif int(ts.batch) % self.log_interval == 0 and wall > self._last[1]:
            logger.log_metrics(self.compute(tokens - self._last[0], wall - self._last[1], state))
            self._last = (tokens, wall)
        self.overhead_s += time.perf_counter() - t0

    def compute(self, d_tokens: int, d_seconds: float, state: State) -> dict[str, float]:
        rate = FlopsRate(self.fpt or 0.0, self.fpt_causal or 0.0, float(self.peak or 0.0), self.hfu_factor)
        elapsed = state.get_elapsed_duration()
        return mfu_metrics(rate, d_tokens, d_seconds, dist.get_world_size(),
                           elapsed_fraction=None if elapsed is None else float(elapsed.value),
                           wall_seconds=state.timestamp.total_wct.total_seconds(),
                           usd_per_gpu_hour=self.usd_per_gpu_hour)

    def state_dict(self) -> dict[str, Any]:
        return {'peak': self.peak, 'peak_source': self.peak_source}
