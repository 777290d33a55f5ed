"""Typed options of ``foundry-ext plan`` and of the planner's one-line summary at training start (no torch)."""
from __future__ import annotations

from dataclasses import dataclass, field

from foundry_ext.errors import UserError
from foundry_ext.throughput import hardware


@dataclass
class PlanConfig:
    gpu: str                                   # a GPU name: h100-sxm, h200, a100-80gb, ... (hardware.GPU_MEMORY_GIB)
    gpus: int = 1                              # GPUs per node
    nodes: int = 1                             # nodes (world = gpus x nodes)
    tokens: str | None = None                  # tokens to train (26B, 1T, 2.6e10); default: from max_duration
    mfu: float | None = None                   # MFU to assume (the mfu_monitor convention); default: a prior
    usd_per_gpu_hour: float | None = None      # price of one GPU-hour, for the cost
    host_ram_gb: float | None = None           # host RAM per node, for a host verdict
    ignore_keys: list[str] = field(default_factory=list)   # keys to plan as if they had no memory effect

    def __post_init__(self) -> None:
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 1:
            raise UserError(f'--gpus must be a positive integer (GPUs per node), got {self.gpus!r}')
        if isinstance(self.nodes, bool) or not isinstance(self.nodes, int) or self.nodes < 1:
            raise UserError(f'--nodes must be a positive integer, got {self.nodes!r}')
        if self.mfu is not None and not 0 < self.mfu <= 1:
            raise UserError(f'--mfu must be in (0, 1], e.g. 0.4, got {self.mfu!r}')
        if self.usd_per_gpu_hour is not None and self.usd_per_gpu_hour < 0:
            raise UserError(f'--usd-per-gpu-hour must be >= 0, got {self.usd_per_gpu_hour!r}')
        if self.host_ram_gb is not None and not self.host_ram_gb > 0:
            raise UserError(f'--host-ram-gib must be > 0, got {self.host_ram_gb!r}')
        self.gpu_key = hardware.gpu_key(self.gpu)   # unknown name -> one line listing the known ones
        if self.tokens is not None:
            from foundry_ext.plan.speed import parse_tokens
            self.token_count: float | None = parse_tokens(self.tokens)
        else:
            self.token_count = None

    @property
    def world(self) -> int:
        return self.gpus * self.nodes
