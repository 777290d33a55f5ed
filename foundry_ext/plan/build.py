"""One plan: a validated training config + a cluster -> memory, speed, fixes (pure)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from foundry_ext.plan import advice, memory, speed
from foundry_ext.plan.config import PlanConfig
from foundry_ext.plan.inputs import TrainSetup, read_setup
from foundry_ext.plan.memory import Cluster, MemoryPlan
from foundry_ext.plan.speed import SpeedPlan
from foundry_ext.throughput import hardware


@dataclass
class Plan:
    setup: TrainSetup
    cluster: Cluster
    memory: MemoryPlan
    speed: SpeedPlan
    largest_microbatch: int | None          # the largest microbatch that fits (None: not even 1)
    recommended_microbatch: int | None      # the largest that keeps memory.TIGHT of the GPU free
    auto_microbatch: bool                   # the yaml said 'auto' (Composer's search, resolved here)
    fixes: list[advice.Option] = field(default_factory=list)
    host_ram: float | None = None           # bytes per node, when known
    notes: list[str] = field(default_factory=list)

    @property
    def host_peak(self) -> float:
        return max(self.memory.host.values()) if self.memory.host else 0.0

    @property
    def host_fits(self) -> bool | None:
        return None if self.host_ram is None else self.host_peak <= self.host_ram


def cluster_of(opts: PlanConfig) -> Cluster:
    key = opts.gpu_key
    return Cluster(key, hardware.gpu_memory_bytes(key), opts.gpus, opts.nodes, hardware.gpu_peak_key(key))


def detected_cluster(name: str, total_bytes: float, gpus_per_node: int, nodes: int) -> Cluster:
    """The cluster a training run is on (device name and memory from torch)."""
    key = hardware.device_key(name)
    try:
        gpu = hardware.gpu_key(name)
    except Exception:
        gpu = name
    return Cluster(gpu, float(total_bytes), gpus_per_node, nodes, key)


def make_plan(cfg: Mapping[str, Any] | TrainSetup, cluster: Cluster, mfu: float | None = None,
              tokens: float | None = None, usd_per_gpu_hour: float | None = None, host_ram: float | None = None,
              ignore: tuple[str, ...] = (), with_fixes: bool = True) -> Plan:
    setup = cfg if isinstance(cfg, TrainSetup) else read_setup(cfg, ignore)
    _, mb_cfg = memory.batch_sizes(setup, cluster.world)
    auto = mb_cfg == 'auto'
    mb = memory.resolve_auto(setup, cluster) if auto else None
    mem = memory.estimate(setup, cluster, mb)
    sp = speed.speed(setup, cluster, mem, mfu, tokens, usd_per_gpu_hour)
    largest = memory.largest_fitting(setup, cluster)
    safe = memory.largest_fitting(setup, cluster, memory.TIGHT * cluster.memory) if largest else None
    plan = Plan(setup, cluster, mem, sp, largest, safe or largest, auto, host_ram=host_ram)
    plan.notes = list(setup.notes) + list(mem.effective.notes)
    if with_fixes and not mem.fits:
        plan.fixes = advice.fixes(setup, cluster)
    return plan


def to_dict(plan: Plan) -> dict[str, Any]:
    """Everything the text report shows, as plain JSON data (bytes as numbers, GiB alongside)."""
    m, s, sp, mem = plan.setup.model, plan.setup.model.shape, plan.speed, plan.memory
    gib = memory.GiB
    return {
        'model': {'name': m.name, 'family': m.hf_type or 'mpt', 'params_total': m.counts.total,
                  'params_active': m.counts.active, 'params_trainable': m.trainable, 'd_model': s.d_model,
                  'n_layers': s.n_layers, 'vocab_size': s.vocab_size, 'experts': s.experts, 'top_k': s.top_k,
                  'attention': m.attn, 'lora_rank': m.lora.r if m.lora else None},
        'cluster': {'gpu': plan.cluster.gpu, 'gpus_per_node': plan.cluster.gpus_per_node,
                    'nodes': plan.cluster.nodes, 'gpus': plan.cluster.world, 'memory_gib': plan.cluster.memory / gib},
        'parallelism': {'mode': mem.effective.mode, 'shard_degree': mem.effective.shard,
                        'activation_checkpointing': mem.effective.ac, 'param_bytes': mem.effective.param_bytes},
        'batch': {'seq_len': plan.setup.batch.seq_len, 'device_batch': mem.device_batch,
                  'microbatch': mem.microbatch, 'grad_accum': mem.accum, 'microbatch_auto': plan.auto_microbatch,
                  'largest_fitting_microbatch': plan.largest_microbatch,
                  'recommended_microbatch': plan.recommended_microbatch},
        'memory': {'terms': {k: {'label': t.label, 'bytes': t.bytes, 'gib': t.bytes / gib, 'note': t.note}
                             for k, t in mem.terms.items()},
                   'phases_gib': {k: v / gib for k, v in mem.phases.items()}, 'peak_phase': mem.peak_phase,
                   'allocated_gib': mem.allocated / gib, 'total_gib': mem.total / gib,
                   'capacity_gib': mem.capacity / gib, 'headroom_gib': mem.headroom / gib, 'fits': mem.fits},
        'host': {'per_node_gib': {k: v / gib for k, v in mem.host.items()},
                 'terms': {k: {'label': t.label, 'gib': t.bytes / gib, 'note': t.note}
                           for k, t in mem.host_terms.items()},
                 'ram_gib': plan.host_ram / gib if plan.host_ram else None, 'fits': plan.host_fits},
        'speed': {'flops_per_token': sp.flops_per_token, 'executed_flops_per_token': sp.executed_per_token,
                  'peak_flops': sp.peak, 'mfu': sp.mfu, 'mfu_source': sp.mfu_source,
                  'comm_factor': sp.comm_factor, 'tokens_per_s': sp.tokens_per_s,
                  'tokens_per_s_per_gpu': sp.tokens_per_s / plan.cluster.world if sp.tokens_per_s else None,
                  'step_s': sp.step_s},
        'run': {'tokens': sp.run_tokens, 'tokens_source': sp.run_tokens_source, 'days': sp.days,
                'gpu_hours': sp.gpu_hours, 'cost_usd': sp.cost_usd, 'chinchilla_tokens': sp.chinchilla_tokens,
                'chinchilla_ratio': sp.chinchilla_ratio},
        'fixes': [f.as_dict() for f in plan.fixes],
        'notes': plan.notes,
    }
