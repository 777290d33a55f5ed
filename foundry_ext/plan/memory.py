"""Per-GPU memory of a training run, itemized, with the phase that peaks and a verdict (pure).

The run is followed through the phases that allocate the most, for one steady-state optimizer
step (the optimizer states exist; ``zero_grad(set_to_none=True)`` at each batch start):

* ``forward/backward``: weights + optimizer states + FSDP's unsharded working copies + activations,
  at the worst of three moments: the loss backward (log-softmax gradients in flight), the first
  block's backward (its gradient buffers; with checkpointing the recomputed block), and the end of
  the forward (the previous microbatch's logits are still held as Composer's ``state.outputs``).
  Gradients count from the second microbatch on (they accumulate).
* ``optimizer step``: weights + gradients + states (allocated at the first step) + the update's
  temporaries.
* ``train metrics``: Composer's train metrics on the logits after each backward.
* ``checkpoint save``: a full (FSDP ``FULL_STATE_DICT``) save gathers units on the GPU.

Allocated bytes are what ``torch.cuda.max_memory_allocated`` reports; the device also needs the
caching allocator's fragmentation margin and memory outside it (CUDA context, NCCL buffers).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from foundry_ext.errors import UserError
from foundry_ext.plan import activations as act
from foundry_ext.plan.inputs import TrainSetup

GiB = float(2 ** 30)
# Memory outside the caching allocator and its fragmentation: not measurable on CPU. Priors, bounded by
# LLM Foundry's published runs (docs/plan.md): the tightest of them leaves 6.6% of its predicted allocated
# peak for all three together, so they cannot be larger; bench/plan_accuracy.py --device cuda measures them.
CUDA_CONTEXT = 0.5 * GiB           # CUDA context + kernels (lazy loading) per process
NCCL_PER_GROUP = 0.3 * GiB         # NCCL channel buffers per process group
FRAGMENTATION = 0.04               # caching-allocator reserve over allocated
FRAGMENTATION_EXPANDABLE = 0.02    # with expandable_segments: true
TIGHT = 0.05                       # headroom below this fraction of the GPU: within the model's uncertainty
# Host RAM priors per process
HOST_PROCESS = 3.0 * GiB           # python + torch + Composer + LLM Foundry, CUDA host state
HOST_WORKER = 0.5 * GiB            # one dataloader worker process
HOST_DCP_BUFFER = 0.5 * GiB        # torch.distributed.checkpoint's CPU staging per rank (sharded saves)


@dataclass(frozen=True)
class Cluster:
    gpu: str                       # hardware.GPU_MEMORY_GIB key, or the detected device name
    memory: float                  # bytes per GPU
    gpus_per_node: int
    nodes: int = 1
    peak_key: str | None = None    # hardware.PEAK_FLOPS row (None: unknown)

    @property
    def world(self) -> int:
        return self.gpus_per_node * self.nodes


@dataclass(frozen=True)
class Effective:
    """How the run is actually parallelized on this cluster (LLM Foundry's rules applied)."""
    mode: str                      # 'single' | 'ddp' | FSDP strategy
    shard: int                     # devices a parameter is sharded over
    reshard: bool                  # FSDP frees the unsharded parameters after the forward
    param_bytes: int               # compute weights (FSDP param_dtype)
    reduce_bytes: int              # gradient reduce dtype
    ac: bool
    groups: int                    # NCCL process groups
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Term:
    key: str
    label: str
    bytes: float
    note: str = ''


@dataclass
class MemoryPlan:
    terms: dict[str, Term]
    phases: dict[str, float]       # allocated bytes per phase
    peak_phase: str
    allocated: float
    fragmentation: float
    outside: float                 # CUDA context + NCCL
    capacity: float
    microbatch: int
    device_batch: int
    accum: int
    effective: Effective
    host: dict[str, float] = field(default_factory=dict)   # per node, bytes per phase
    host_terms: dict[str, Term] = field(default_factory=dict)
    moments: dict[str, float] = field(default_factory=dict)   # the forward/backward moments compared

    @property
    def total(self) -> float:
        return self.allocated + self.fragmentation + self.outside

    @property
    def headroom(self) -> float:
        return self.capacity - self.total

    @property
    def fits(self) -> bool:
        return self.headroom >= 0

    @property
    def tight(self) -> bool:
        """Fits, but by less than the model's uncertainty (TIGHT of the GPU)."""
        return self.fits and self.headroom < TIGHT * self.capacity

    @property
    def verdict(self) -> str:
        return 'DOES NOT FIT' if not self.fits else ('FITS (tight)' if self.tight else 'FITS')


def effective(setup: TrainSetup, cluster: Cluster) -> Effective:
    p, world = setup.parallel, cluster.world
    amp = setup.amp
    if not p.fsdp or world == 1:
        notes: tuple[str, ...] = ()
        if p.fsdp:
            notes = ('1 GPU: LLM Foundry drops fsdp_config (no sharding, no activation checkpointing)',)
        return Effective('single' if world == 1 else 'ddp', 1, False, 4, 4, False, 0 if world == 1 else 1, notes)
    strategy = p.strategy
    hybrid = strategy in ('HYBRID_SHARD', '_HYBRID_SHARD_ZERO2')
    if p.shard_degree > 0:
        shard = min(p.shard_degree, world)
    elif strategy == 'NO_SHARD':
        shard = 1
    else:
        shard = min(cluster.gpus_per_node, world) if hybrid else world
    pb = 2 if amp and p.mixed != 'FULL' else 4
    rb = 2 if amp and p.mixed == 'PURE' else 4
    groups = 2 if (hybrid and cluster.nodes > 1) or (p.shard_degree > 0 and shard < world) else 1
    return Effective(strategy, shard, strategy in ('FULL_SHARD', 'HYBRID_SHARD'), pb, rb, p.ac, groups)


def batch_sizes(setup: TrainSetup, world: int, check_microbatch: bool = True) -> tuple[int, int | str]:
    """(per-device batch, microbatch or 'auto'); one-line UserErrors for impossible batches."""
    b = setup.batch
    if b.global_batch is not None:
        if b.global_batch % world:
            raise UserError(f'global_train_batch_size {b.global_batch} is not divisible by {world} GPUs; '
                            'pick a multiple of the GPU count')
        device = b.global_batch // world
        if device == 0:
            raise UserError(f'global_train_batch_size {b.global_batch} is smaller than the {world} GPUs')
    elif b.device_batch is not None:
        device = b.device_batch
    else:
        raise UserError('set global_train_batch_size (or device_train_batch_size)')
    mb: int | str = device
    if b.microbatch == 'auto':
        mb = 'auto'
    elif isinstance(b.microbatch, int):
        mb = min(b.microbatch, device) if not check_microbatch else b.microbatch
        if mb > device:
            raise UserError(f'device_train_microbatch_size {mb} is larger than the per-device batch {device} '
                            f'(global_train_batch_size / {world} GPUs); use at most {device}')
    elif b.grad_accum:
        mb = math.ceil(device / b.grad_accum)
    return device, mb


def _units(setup: TrainSetup) -> tuple[float, float, float]:
    """(params of one transformer block, of the root (embeddings, final norm, untied head), the largest
    trainable tensor)."""
    s, c = setup.model.shape, setup.model.counts
    root = c.embedding + s.d_model * (2 if s.bias else 1)
    block = (c.total - root) / s.n_layers
    lora = setup.model.lora
    if lora is not None:   # the largest trainable tensor: one LoRA A or B matrix
        return block, root, lora.r * max(s.d_model, s.ffn_hidden, s.n_heads * s.head_dim)
    ffn_w = s.d_model * s.ffn_hidden * (s.experts if s.experts > 1 else 1)
    largest = max(s.vocab_size * s.d_model, ffn_w, s.d_model * (s.n_heads + 2 * s.kv_heads) * s.head_dim)
    return block, root, largest


def estimate(setup: TrainSetup, cluster: Cluster, microbatch: int | None = None,
             checkpointing: bool | None = None) -> MemoryPlan:
    """The memory plan; ``microbatch`` overrides the yaml's (``auto`` is resolved by :func:`resolve_auto`).
    ``checkpointing`` forces activation checkpointing on/off whatever FSDP would do (the CPU calibration
    applies Composer's checkpoint wrapper itself, without FSDP)."""
    eff = effective(setup, cluster)
    if checkpointing is not None:
        eff = replace(eff, ac=checkpointing)
    device, mb_cfg = batch_sizes(setup, cluster.world, check_microbatch=microbatch is None)
    mb = microbatch if microbatch is not None else (mb_cfg if isinstance(mb_cfg, int) else device)
    mb = max(1, min(mb, device))
    accum = math.ceil(device / mb)
    m, seq = setup.model, setup.batch.seq_len
    P, T = m.counts.total, m.trainable
    N = eff.shard
    fsdp = eff.mode not in ('single', 'ddp')
    casts = setup.amp and eff.param_bytes == 4
    a = 2 if setup.amp else 4
    num = act.Numerics(a=a, r=eff.param_bytes if setup.amp else 4, ce=4, casts=casts)
    acts = act.estimate(m, num, mb * seq, seq)
    block, root, largest = _units(setup)
    matmul = P - m.counts.embedding + m.shape.vocab_size * m.shape.d_model   # weights autocast copies
    frozen_root = m.lora is not None
    T_block = 0.0 if m.lora else block
    T_root = 0.0 if frozen_root else root
    gb = 2 if setup.parallel.low_precision_grads and fsdp else 4

    t: dict[str, Term] = {}

    def add(key: str, label: str, nbytes: float, note: str = '') -> None:
        t[key] = Term(key, label, float(nbytes), note)

    shard_note = f'/ {N} shards' if N > 1 else 'unsharded'
    add('weights', 'weights (fp32 master)', 4 * P / N, f'4 B x {P / 1e9:.3g}B params {shard_note}')
    add('gradients', 'gradients', gb * T / N, f'{gb} B x {T / 1e9:.3g}B trainable {shard_note}')
    st = setup.optim.states
    add('optimizer', f'optimizer states ({setup.optim.name})', 4 * st * T / N, f'{st} fp32 states per trainable param')
    pb = eff.param_bytes
    if fsdp:
        working: float
        if setup.parallel.whole_model_unit or not eff.reshard:
            working = float(P * pb)
            wnote = 'all blocks unsharded from forward to backward' if not eff.reshard else 'one FSDP unit'
        else:
            inflight = 1 + setup.parallel.prefetch
            working = (inflight * block + root) * pb
            wnote = f'{inflight} blocks in flight + embeddings, {pb} B'
        if eff.mode == 'NO_SHARD' and pb == 4:
            working = 0.0
        add('fsdp_params', 'FSDP unsharded params', working, wnote)
        ug = T_block * pb + (T_block * 4 if eff.reduce_bytes == 4 and pb == 2 else 0) + T_root * pb
        add('fsdp_grads', 'FSDP unsharded grads', ug, 'one block + embeddings, before reduce-scatter')
    if casts:
        add('weight_casts', 'autocast weight copies', 2 * matmul,
            'amp over fp32 weights: bf16 copies kept for backward')
    if eff.mode == 'ddp':
        add('ddp_buckets', 'DDP gradient buckets', 4 * T, 'a second fp32 copy of the gradients')
    ac_offload = setup.parallel.ac_offload and fsdp
    if eff.ac and not ac_offload:
        saved = acts.saved(True)
        add('activations', 'activations (checkpointed)', saved,
            f'{m.shape.n_layers} block inputs; microbatch {mb} x {seq}')
    elif ac_offload:
        saved = acts.head + acts.layer
        add('activations', 'activations (CPU offload)', saved, 'one block in flight; the rest in host RAM')
    else:
        saved = acts.saved(False)
        add('activations', 'activations', saved, f'{acts.layer / GiB * 1024:.0f} MiB per block x {m.shape.n_layers}; '
            f'microbatch {mb} x {seq}')
    add('logits', 'logits + loss', acts.logits + acts.ce_saved, f'vocab {m.shape.vocab_size:,} x {mb * seq:,} tokens')
    add('loss_backward', 'loss backward (transient)', acts.ce_backward, 'log-softmax gradients' if m.loss == 'torch'
        else 'fused cross-entropy gradient')
    recompute = acts.layer if eff.ac else 0.0
    sh = m.shape
    stacked = sh.d_model * sh.ffn_hidden * sh.experts if sh.experts > 1 and m.lora is None else 0
    if fsdp:     # the unit's unsharded grads are fsdp_grads; MoE: per-expert grads before they are stacked
        wgrad: float = stacked * pb
    elif accum == 1:   # the head's and this block's new weight gradients (+ pieces of stacked experts)
        wgrad = (T_root + T_block + stacked) * gb
    else:        # a new gradient before it is added into .grad (stacked experts: pieces + stack)
        matrix = max(sh.d_model * sh.ffn_hidden, sh.d_model * (sh.n_heads + 2 * sh.kv_heads) * sh.head_dim)
        wgrad = (2 * stacked if stacked else (matrix if m.lora is None else 0)) * gb
    add('block_backward', 'block backward (transient)', acts.layer_backward + recompute + wgrad,
        ('recomputed block + ' if eff.ac else '') + 'activation and weight gradients of one block')
    add('prev_logits', 'previous logits (state.outputs)', acts.logits, 'held until the next forward returns')
    step_tmp = _step_temps(setup, T, N, largest, fsdp)
    add('step_temps', 'optimizer step temporaries', step_tmp, 'largest parameter' if setup.optim.per_param
        else 'one fp32 copy of the trainable shard (foreach)')
    if setup.model.train_metrics:
        add('metrics', 'train metrics (transient)', acts.metrics, 'cross-entropy on the logits after backward')
    save = _save_transient(setup, eff, block, root, fsdp)
    if save:
        add('checkpoint', 'checkpoint save (transient)', save, 'FULL_STATE_DICT gathers one unit (+ states)')

    v = {k: x.bytes for k, x in t.items()}
    g = v.get
    static = v['weights'] + v['optimizer'] + g('fsdp_params', 0) + g('weight_casts', 0)
    grads_acc = v['gradients'] + g('ddp_buckets', 0) if accum > 1 else 0.0
    root_grad = T_root * pb if fsdp else 0.0
    base = static + grads_acc + v['activations']
    moments = {'loss backward': base + v['logits'] + v['loss_backward'] + root_grad,
               'first block backward': base + v['logits'] - acts.ce_saved + v['block_backward'] + g('fsdp_grads', 0),
               'end of forward': base + acts.logits + v['prev_logits'],
               'end of backward': static + v['gradients'] + g('ddp_buckets', 0) + acts.logits + g('fsdp_grads', 0)}
    fwdbwd = max(moments.values())
    phases = {'forward/backward': fwdbwd,
              'optimizer step': v['weights'] + v['gradients'] + v['optimizer'] + step_tmp + acts.logits}
    if 'metrics' in v:
        phases['train metrics'] = v['weights'] + v['optimizer'] + v['gradients'] + acts.logits + v['metrics']
    if 'checkpoint' in v:
        phases['checkpoint save'] = v['weights'] + v['optimizer'] + v['gradients'] + acts.logits + v['checkpoint']
    peak_phase = max(phases, key=lambda k: phases[k])
    allocated = phases[peak_phase]
    frag = allocated * (FRAGMENTATION_EXPANDABLE if setup.expandable_segments else FRAGMENTATION)
    outside = CUDA_CONTEXT + NCCL_PER_GROUP * eff.groups
    add('fragmentation', 'allocator fragmentation margin', frag,
        f'{100 * frag / allocated if allocated else 0:.0f}% of allocated')
    add('cuda_context', 'CUDA context + NCCL buffers', outside, f'{eff.groups} NCCL group(s)')
    plan = MemoryPlan(terms=t, phases=phases, peak_phase=peak_phase, allocated=allocated, fragmentation=frag,
                      outside=outside, capacity=cluster.memory, microbatch=mb, device_batch=device, accum=accum,
                      effective=eff, moments=moments)
    _host(plan, setup, cluster, acts.layer * m.shape.n_layers if ac_offload else 0.0)
    return plan


def _step_temps(setup: TrainSetup, T: float, N: int, largest: float, fsdp: bool) -> float:
    o = setup.optim
    if o.fused or o.states == 0:
        return 0.0
    if o.per_param:   # Adam: sqrt and divide (+ the previous parameter's denominator); Lion: its update (+ previous)
        big = largest / (N if fsdp else 1)
        return (3 if o.states >= 2 else 2) * 4 * min(big, T / N)
    return 4 * T / N


def _save_transient(setup: TrainSetup, eff: Effective, block: float, root: float, fsdp: bool) -> float:
    if not (setup.saves or setup.hf_checkpointer):
        return 0.0
    unit = max(block, root)
    out = 0.0
    if fsdp and setup.saves and setup.parallel.state_dict == 'full':
        states = 0 if setup.save_weights_only else setup.optim.states
        out = 4 * unit * (1 + states)
    if fsdp and setup.hf_checkpointer:
        out = max(out, 4 * unit)
    return out


def _host(plan: MemoryPlan, setup: TrainSetup, cluster: Cluster, offloaded: float) -> None:
    """Host RAM per node: processes, dataloader workers, model init, checkpoint staging."""
    ranks = cluster.gpus_per_node
    P, T = setup.model.counts.total, setup.model.trainable
    h: dict[str, Term] = {}

    def add(key: str, label: str, nbytes: float, note: str = '') -> None:
        h[key] = Term(key, label, float(nbytes), note)

    add('processes', 'training processes', ranks * HOST_PROCESS, f'{ranks} x {HOST_PROCESS / GiB:.1f} GiB (prior)')
    add('workers', 'dataloader workers', ranks * setup.workers * HOST_WORKER,
        f'{ranks} x {setup.workers} workers (train + eval loaders) x {HOST_WORKER / GiB:.1f} GiB (prior)')
    if offloaded:
        add('act_offload', 'offloaded activations', ranks * offloaded, 'activation_cpu_offload (pinned)')
    init = setup.model.init_device
    if init == 'cpu':
        add('init', 'model init on CPU', ranks * 4 * P, f'init_device cpu: each of {ranks} ranks builds the fp32 model')
    elif init == 'mixed':
        add('init', 'model init on CPU', 4 * P, 'init_device mixed: rank 0 builds the fp32 model')
    opt = 0 if setup.save_weights_only else setup.optim.states * 4 * T
    stage = 0.0
    if setup.saves:
        if plan.effective.mode in ('single', 'ddp') or setup.parallel.state_dict == 'full':
            stage = 4 * P + opt
            note = 'full state dict on rank 0 (model + optimizer, fp32)'
        else:
            stage = ranks * HOST_DCP_BUFFER
            note = f'sharded: DCP streams each rank\'s shard through a bounded buffer ({ranks} ranks, prior)'
        add('checkpoint', 'checkpoint staging', stage, note)
    if setup.hf_checkpointer:
        hf = 6 * P
        if hf > stage:
            add('checkpoint', 'checkpoint staging', hf, 'hf_checkpointer: full fp32 state dict + bf16 copy on rank 0')
            stage = hf
    steady = sum(x.bytes for k, x in h.items() if k in ('processes', 'workers', 'act_offload'))
    plan.host = {'steady': steady, 'init': steady + (h['init'].bytes if 'init' in h else 0),
                 'checkpoint': steady + stage}
    plan.host_terms = h


def resolve_auto(setup: TrainSetup, cluster: Cluster) -> int:
    """What ``device_train_microbatch_size: auto`` settles on: Composer halves the device batch
    until a microbatch fits (smallest is 1)."""
    device, _ = batch_sizes(setup, cluster.world, check_microbatch=False)
    mb = device
    while mb > 1 and not estimate(setup, cluster, mb).fits:
        mb = max(1, mb // 2)
    return mb


def largest_fitting(setup: TrainSetup, cluster: Cluster, margin: float = 0.0) -> int | None:
    """The largest microbatch (up to the per-device batch) that fits with ``margin`` bytes to spare,
    or None when even 1 does not."""
    device, _ = batch_sizes(setup, cluster.world, check_microbatch=False)

    def ok(mb: int) -> bool:
        return estimate(setup, cluster, mb).headroom >= margin
    if not ok(1):
        return None
    lo, hi = 1, device
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
