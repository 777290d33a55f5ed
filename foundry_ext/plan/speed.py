"""How long and how much: FLOPs, tokens/s, wall-clock days and cost of a run (pure).

FLOPs per token follow the MFU convention (6·N_active + 12·n_layers·d_attn·seq, from
``models.accounting``), so the MFU here is the one ``mfu_monitor`` reports. Time is computed on
the FLOPs the GPUs execute: activation checkpointing adds a second forward of every block, LoRA
skips the weight gradients of the frozen matrices. Without ``--mfu`` the hardware efficiency is a
prior per GPU and model size read off LLM Foundry's published MPT benchmark runs (docs/plan.md),
scaled by sequence length, and lowered when FSDP's per-microbatch all-gathers / reduce-scatters
take longer than the microbatch computes (a ring model over NVLink within a node and the NICs
between nodes).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from foundry_ext.errors import UserError
from foundry_ext.models.accounting import shape_breakdown
from foundry_ext.plan.inputs import TrainSetup
from foundry_ext.plan.memory import Cluster, MemoryPlan
from foundry_ext.throughput import hardware

# Hardware efficiency on executed FLOPs (bf16, dense, compute-bound, seq <= 4k): (active params up to, value).
# From LLM Foundry's MPT benchmark tables (scripts/train/benchmarking/README.md): MFU of runs without
# activation checkpointing, HFU of runs with it.
PRIORS: dict[str, list[tuple[float, float]]] = {
    'h100': [(0.6e9, 0.33), (1.2e9, 0.37), (5e9, 0.42), (1e10, 0.46), (math.inf, 0.48)],
    'a100': [(0.2e9, 0.44), (0.6e9, 0.51), (1.2e9, 0.56), (2e9, 0.59), (5e9, 0.61), (1e10, 0.64), (math.inf, 0.68)],
}
GPU_CLASS = {'h100-sxm': 'h100', 'h200': 'h100', 'b200': 'h100', 'a100-80gb': 'a100', 'a100-40gb': 'a100'}
GENERIC_PRIOR = 0.35       # GPUs without published runs
A100_40GB = 0.92           # the 40 GB runs use smaller microbatches
MOE_FACTOR = 0.6           # token routing, gather/scatter and one matmul per expert
LORA_FACTOR = 0.9          # many small adapter matmuls
SEQ_FACTORS = [(4096, 1.0), (8192, 0.92), (16384, 0.87), (math.inf, 0.82)]
SMALL_MB_TOKENS = 256      # per-microbatch launch overhead, in tokens of compute
# Collective bandwidth per GPU and direction (achievable, ~80% of the link): within a node, between nodes.
INTRA_BW = {'h100-sxm': 360e9, 'h200': 360e9, 'b200': 720e9, 'a100-80gb': 240e9, 'a100-40gb': 240e9,
            'mi300x': 300e9, 'v100-32gb': 120e9, 'v100-16gb': 120e9}
INTER_BW = {'h100-sxm': 40e9, 'h200': 40e9, 'b200': 40e9, 'mi300x': 40e9, 'a100-80gb': 20e9, 'a100-40gb': 20e9}
PCIE_BW, DEFAULT_INTER_BW = 20e9, 10e9
CHINCHILLA = 20.0
_SUFFIX = {'k': 1e3, 'm': 1e6, 'b': 1e9, 'g': 1e9, 't': 1e12}


@dataclass(frozen=True)
class SpeedPlan:
    flops_per_token: float         # the MFU convention (what mfu_monitor divides by)
    executed_per_token: float      # what the GPUs compute (recompute, LoRA)
    peak: float | None             # FLOP/s per GPU
    mfu: float | None              # MFU in the convention
    mfu_source: str
    comm_factor: float             # compute time / (compute + exposed communication)
    tokens_per_s: float | None     # all GPUs
    step_s: float | None
    run_tokens: float | None
    run_tokens_source: str
    days: float | None
    gpu_hours: float | None
    cost_usd: float | None
    chinchilla_tokens: float

    @property
    def chinchilla_ratio(self) -> float | None:
        return self.run_tokens / self.chinchilla_tokens if self.run_tokens else None


def parse_tokens(text: str) -> float:
    """'1T', '300B', '2.6e10', '5_000_000' -> tokens; one-line UserError for bad or negative counts."""
    s = str(text).strip().lower().replace('_', '').replace(',', '')
    m = re.fullmatch(r'([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)\s*([kmbgt]?)(?:tok(?:ens)?)?', s)
    if not m:
        raise UserError(f'--tokens {text!r} is not a token count; write e.g. 26B, 1T or 2.6e10')
    n = float(m.group(1)) * _SUFFIX.get(m.group(2), 1.0)
    if not n > 0:
        raise UserError(f'--tokens must be > 0, got {text!r}')
    return n


def prior_efficiency(setup: TrainSetup, cluster: Cluster) -> tuple[float, str]:
    """(hardware efficiency on executed FLOPs, where it came from)."""
    m = setup.model
    active = m.counts.active
    cls = GPU_CLASS.get(cluster.gpu)
    if cls is None:
        eff, why = GENERIC_PRIOR, f'generic prior for {cluster.gpu} (no published runs)'
    else:
        eff = next(v for up_to, v in PRIORS[cls] if active <= up_to)
        why = f'prior: {cls} runs near {active / 1e9:.2g}B'
        if cluster.gpu == 'a100-40gb':
            eff *= A100_40GB
    seq = setup.batch.seq_len
    f = next(v for up_to, v in SEQ_FACTORS if seq <= up_to)
    if f != 1.0:
        eff *= f
        why += f', seq {seq} x{f}'
    if m.shape.experts > 1:
        eff *= MOE_FACTOR
        why += f', MoE x{MOE_FACTOR}'
    if m.lora:
        eff *= LORA_FACTOR
        why += f', LoRA x{LORA_FACTOR}'
    return eff, why


def executed_per_token(setup: TrainSetup, fpt: float, ac: bool) -> float:
    """FLOPs per token the GPUs run: + a forward of every block with checkpointing; LoRA skips the
    frozen weights' gradients (2 FLOPs per frozen matmul parameter)."""
    m = setup.model
    s = m.shape
    b = shape_breakdown(s, setup.batch.seq_len)
    out = fpt
    if m.lora:
        frozen = b.active_params
        out -= 2.0 * frozen - 6.0 * m.lora.params
    if ac:
        out += 2.0 * (b.active_params - b.lm_head_params) + b.attn_flops / 3.0
    return out


def _collective(nbytes: float, group: int, cluster: Cluster) -> float:
    """Seconds for a ring all-gather / reduce-scatter of ``nbytes`` (full size) over ``group`` GPUs."""
    if group <= 1:
        return 0.0
    g = min(group, cluster.gpus_per_node)
    nodes = math.ceil(group / g)
    t = nbytes * (g - 1) / g / INTRA_BW.get(cluster.gpu, PCIE_BW) if g > 1 else 0.0
    if nodes > 1:
        t += nbytes * (nodes - 1) / nodes / (g * INTER_BW.get(cluster.gpu, DEFAULT_INTER_BW))
    return t


def comm_factor(setup: TrainSetup, cluster: Cluster, mem: MemoryPlan, compute_mb: float) -> float:
    """compute / (compute + communication that cannot hide behind it), for one optimizer step."""
    e = mem.effective
    P, T = setup.model.counts.total, setup.model.trainable
    world = cluster.world
    if e.mode == 'single' or compute_mb <= 0:
        return 1.0
    accum = mem.accum
    if e.mode == 'ddp':
        comm = 2 * _collective(4 * T, world, cluster)   # one all-reduce of fp32 grads, on the last microbatch
        step = (accum - 1) * compute_mb + max(compute_mb, comm)
        return accum * compute_mb / step
    per_mb = (2 if e.reshard else 1) * _collective(e.param_bytes * P, e.shard, cluster) \
        + _collective(e.reduce_bytes * T, e.shard, cluster)
    if e.mode == 'NO_SHARD':
        per_mb = 2 * _collective(e.reduce_bytes * T, world, cluster)
    replicas = world // max(1, e.shard)
    if replicas > 1 and e.mode != 'NO_SHARD':   # HSDP: all-reduce each shard across the replicas
        per_mb += 2 * (e.reduce_bytes * T / e.shard) * (replicas - 1) / replicas / \
            INTER_BW.get(cluster.gpu, DEFAULT_INTER_BW)
    return compute_mb / max(compute_mb, per_mb)


def small_microbatch_factor(tokens: int) -> float:
    """Kernel efficiency of a microbatch relative to the ~16k-token ones of the published runs."""
    k = lambda t: t / (t + SMALL_MB_TOKENS)  # noqa: E731
    return min(1.0, k(tokens) / k(16384))


def run_tokens(setup: TrainSetup, tokens: float | None) -> tuple[float | None, str]:
    if tokens is not None:
        return tokens, '--tokens'
    if setup.duration is None:
        return None, 'unknown (max_duration is not in ba/tok/sp): pass --tokens'
    value, unit = setup.duration
    seq = setup.batch.seq_len
    if unit == 'tok':
        return value, 'max_duration'
    if unit == 'sp':
        return value * seq, 'max_duration'
    if setup.batch.global_batch is None:
        return None, 'unknown (max_duration in batches without global_train_batch_size): pass --tokens'
    return value * setup.batch.global_batch * seq, 'max_duration'


def speed(setup: TrainSetup, cluster: Cluster, mem: MemoryPlan, mfu: float | None = None,
          tokens: float | None = None, usd_per_gpu_hour: float | None = None) -> SpeedPlan:
    b = shape_breakdown(setup.model.shape, setup.batch.seq_len)
    fpt = b.flops_per_token
    ac = mem.effective.ac
    executed = executed_per_token(setup, fpt, ac)
    peak = None
    if cluster.peak_key is not None:
        col = hardware.PRECISION_KEY.get(setup.precision, 'fp32')
        peak = hardware.PEAK_FLOPS.get(cluster.peak_key, {}).get(col)
    world = cluster.world
    mb_tokens = mem.microbatch * setup.batch.seq_len
    rt, rt_src = run_tokens(setup, tokens)
    chin = CHINCHILLA * setup.model.counts.total
    if peak is None:
        return SpeedPlan(fpt, executed, None, mfu, 'no peak FLOP/s for this device/precision', 1.0, None, None,
                         rt, rt_src, None, None, None, chin)
    eff, src = prior_efficiency(setup, cluster)
    eff *= small_microbatch_factor(mb_tokens)
    compute_mb = executed * mb_tokens / (eff * peak)
    cf = comm_factor(setup, cluster, mem, compute_mb)
    if mfu is not None:
        model_mfu, src = mfu, 'given (--mfu)'
    else:
        model_mfu = eff * cf * fpt / executed
        if ac:
            src += ', checkpointing recompute'
        if cf < 0.999:
            src += f', FSDP communication x{cf:.2f}'
    tps = model_mfu * peak * world / fpt
    step = (mem.device_batch * world * setup.batch.seq_len) / tps
    days = gpu_h = cost = None
    if rt:
        days = rt / tps / 86400
        gpu_h = days * 24 * world
        cost = gpu_h * usd_per_gpu_hour if usd_per_gpu_hour is not None else None
    return SpeedPlan(fpt, executed, peak, model_mfu, src, cf, tps, step, rt, rt_src, days, gpu_h, cost, chin)
