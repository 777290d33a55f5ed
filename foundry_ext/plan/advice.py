"""What to change when a run does not fit, ranked by what it costs; the microbatch to use (pure).

Candidates are the config changes that lower memory (activation checkpointing, FULL_SHARD instead
of SHARD_GRAD_OP / HYBRID / NO_SHARD / DDP, PURE mixed precision, a memory-efficient attention
kernel, the fused cross-entropy) alone and combined, each with the largest microbatch that then
fits; then more GPUs; then LoRA for a Hugging Face model. Each comes with its predicted memory and
its predicted throughput per GPU relative to the current config (the speed model of
``plan.speed``), and they are ranked by that throughput: the cheapest change first.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from foundry_ext.plan import memory as mem
from foundry_ext.plan import speed as spd
from foundry_ext.plan.inputs import TrainSetup, read_lora
from foundry_ext.plan.memory import Cluster, MemoryPlan

MAX_NODES = 256


@dataclass(frozen=True)
class Option:
    change: str                    # in words
    overrides: tuple[str, ...]     # key=value overrides that make it (for the yaml or the command line)
    kind: str                      # 'config' | 'hardware' | 'method'
    cluster: Cluster
    memory: MemoryPlan
    tokens_per_s: float | None     # all GPUs
    per_gpu_relative: float | None   # tokens/s per GPU vs the current config (1.0 = no cost)

    def as_dict(self) -> dict[str, Any]:
        return {'change': self.change, 'overrides': list(self.overrides), 'kind': self.kind,
                'gpus': self.cluster.world, 'peak_gib': self.memory.total / mem.GiB,
                'headroom_gib': self.memory.headroom / mem.GiB, 'microbatch': self.memory.microbatch,
                'tokens_per_s': self.tokens_per_s, 'per_gpu_relative': self.per_gpu_relative}


def _toggles(setup: TrainSetup, cluster: Cluster) -> list[tuple[str, tuple[str, ...], dict[str, Any]]]:
    eff = mem.effective(setup, cluster)
    m = setup.model
    out: list[tuple[str, tuple[str, ...], dict[str, Any]]] = []
    fsdp = eff.mode not in ('single', 'ddp')
    if fsdp and not eff.ac:
        out.append(('activation checkpointing', ('fsdp_config.activation_checkpointing=true',), {'ac': True}))
    if fsdp and eff.mode != 'FULL_SHARD':
        out.append((f'FULL_SHARD instead of {eff.mode}', ('fsdp_config.sharding_strategy=FULL_SHARD',),
                    {'strategy': 'FULL_SHARD', 'shard_degree': -1}))
    if eff.mode == 'ddp':
        out.append(('FSDP FULL_SHARD (PURE) instead of DDP', ('fsdp_config.sharding_strategy=FULL_SHARD',
                    'fsdp_config.mixed_precision=PURE'), {'fsdp': True, 'strategy': 'FULL_SHARD', 'mixed': 'PURE'}))
    if fsdp and setup.amp and setup.parallel.mixed == 'FULL':
        out.append(('mixed_precision PURE', ('fsdp_config.mixed_precision=PURE',), {'mixed': 'PURE'}))
    if m.attn == 'math':
        if m.template == 'hf':
            out.append(('SDPA attention', ('model.attn_implementation=sdpa',), {'attn': 'sdpa'}))
        elif m.name == 'foundry_mpt_causal_lm':
            out.append(('SDPA attention', ('model.attn_config.attn_impl=sdpa',), {'attn': 'sdpa'}))
        else:
            out.append(('flash attention (flash-attn)', ('model.attn_config.attn_impl=flash',),
                        {'attn': 'flash', 'attn_mask': 'none'}))
    if m.template == 'mpt' and m.loss == 'torch':
        out.append(('fused cross-entropy (flash-attn)', ('model.loss_fn=fused_crossentropy',), {'loss': 'fused'}))
    return out


def _evaluate(setup: TrainSetup, cluster: Cluster, base_per_gpu: float | None, change: str,
              overrides: tuple[str, ...], kind: str, current_mb: int) -> Option | None:
    best = mem.largest_fitting(setup, cluster)
    if best is None:
        return None
    mb = min(best, current_mb) if kind != 'method' else best
    plan = mem.estimate(setup, cluster, mb)
    if mb != current_mb:
        overrides = overrides + (f'device_train_microbatch_size={mb}',)
        change = f'{change}, microbatch {mb}' if change else f'microbatch {mb}'
    sp = spd.speed(setup, cluster, plan)
    tps = sp.tokens_per_s
    rel = tps / cluster.world / base_per_gpu if tps and base_per_gpu else None
    return Option(change, overrides, kind, cluster, plan, tps, rel)


def _bigger_clusters(cluster: Cluster, global_batch: int | None) -> list[Cluster]:
    out = []
    g, n = cluster.gpus_per_node, cluster.nodes
    sizes = [(gg, 1) for gg in (2, 4, 8) if gg > g and n == 1]
    gpn = max(g, 8) if n > 1 or g >= 8 else 8
    nodes = 2 if n == 1 else n * 2
    while nodes <= MAX_NODES:
        sizes.append((gpn, nodes))
        nodes *= 2
    for gg, nn in sizes:
        if global_batch is None or global_batch % (gg * nn) == 0:
            out.append(Cluster(cluster.gpu, cluster.memory, gg, nn, cluster.peak_key))
    return out


def fixes(setup: TrainSetup, cluster: Cluster, limit: int = 5) -> list[Option]:
    """Ranked ways to make ``setup`` fit on ``cluster`` (empty when nothing found)."""
    current = mem.estimate(setup, cluster)
    base = spd.speed(setup, cluster, current).tokens_per_s
    base_per_gpu = base / cluster.world if base else None
    toggles = _toggles(setup, cluster)
    seen: set[tuple[str, ...]] = set()
    fitting: list[tuple[set[str], int]] = []   # toggle sets that fit, with their microbatch
    config: list[Option] = []
    for k in range(len(toggles) + 1):
        for combo in itertools.combinations(toggles, k):
            names = {c for c, _, _ in combo}
            s = setup.with_(**{kk: vv for _, _, ch in combo for kk, vv in ch.items()})
            change = ' + '.join(c for c, _, _ in combo)
            ovs = tuple(o for _, os_, _ in combo for o in os_)
            opt = _evaluate(s, cluster, base_per_gpu, change, ovs, 'config', current.microbatch)
            if opt is None or opt.overrides in seen:
                continue
            if any(sub < names and mb >= opt.memory.microbatch for sub, mb in fitting):
                continue   # a smaller change already fits with as large a microbatch
            seen.add(opt.overrides)
            fitting.append((names, opt.memory.microbatch))
            config.append(opt)
    config.sort(key=lambda o: (-(o.per_gpu_relative or 0), len(o.overrides), o.memory.total))
    out = config[:limit]
    for c in _bigger_clusters(cluster, setup.batch.global_batch):   # more GPUs, same config
        found = _evaluate(setup, c, base_per_gpu, '', (), 'hardware', current.microbatch)
        if found is not None:
            n = found.cluster.nodes
            where = f'{found.cluster.world} GPUs ({n} node{"s" if n > 1 else ""} x {found.cluster.gpus_per_node})'
            out.append(Option(where + (f', {found.change}' if found.change else ''), found.overrides,
                              'hardware', found.cluster, found.memory, found.tokens_per_s, found.per_gpu_relative))
            break
    if setup.model.template == 'hf' and setup.model.lora is None:
        lora = read_lora({'r': 16, 'target_modules': 'all-linear'}, setup.model.shape, lambda *a: None)
        opt = _evaluate(setup.with_(lora=lora), cluster, base_per_gpu, 'LoRA r=16 on all linear layers',
                        ('model.peft_config={peft_type: LORA, r: 16, lora_alpha: 32, target_modules: all-linear}',),
                        'method', current.microbatch)
        if opt is not None:
            out.append(opt)
    return out


def recommend_microbatch(setup: TrainSetup, cluster: Cluster) -> tuple[int | None, int]:
    """(largest microbatch that fits or None, the per-device batch)."""
    device, _ = mem.batch_sizes(setup, cluster.world, check_microbatch=False)
    return mem.largest_fitting(setup, cluster), device
