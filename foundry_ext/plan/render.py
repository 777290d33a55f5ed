"""The planner's words: the text report, ``--diff`` between configs, the one-line training summary."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from foundry_ext.plan.build import Plan
from foundry_ext.plan.memory import TIGHT, GiB

_ORDER = ('weights', 'gradients', 'optimizer', 'fsdp_params', 'fsdp_grads', 'weight_casts', 'ddp_buckets',
          'activations', 'logits', 'loss_backward', 'block_backward', 'prev_logits', 'metrics', 'step_temps',
          'checkpoint', 'fragmentation', 'cuda_context')


def _n(x: float) -> str:
    for unit, div in (('T', 1e12), ('B', 1e9), ('M', 1e6), ('k', 1e3)):
        if abs(x) >= div:
            return f'{x / div:.3g}{unit}'
    return f'{x:.3g}'


def _g(b: float) -> str:
    v = b / GiB
    return f'{v:.2f}' if abs(v) < 10 else f'{v:.1f}'


def _dur(days: float) -> str:
    if days < 1 / 24:
        return f'{days * 1440:.0f} min'
    if days < 2:
        return f'{days * 24:.1f} h'
    return f'{days:.1f} days'


def describe_model(plan: Plan) -> str:
    m, s = plan.setup.model, plan.setup.model.shape
    c = m.counts
    moe = f', MoE {s.experts} experts top-{s.top_k}' if s.experts > 1 else ''
    lora = f', LoRA r={m.lora.r} ({"/".join(m.lora.targets)})' if m.lora else ''
    fam = f' ({m.hf_type})' if m.hf_type else ''
    return (f'{m.name}{fam}: {_n(c.total)} params ({_n(c.active)} active, {_n(m.trainable)} trainable), '
            f'd_model {s.d_model}, {s.n_layers} layers, vocab {s.vocab_size:,}{moe}{lora}; attention {m.attn}')


def describe_cluster(plan: Plan) -> str:
    c, e = plan.cluster, plan.memory.effective
    nodes = f'{c.nodes} nodes x {c.gpus_per_node}' if c.nodes > 1 else '1 node'
    if e.mode == 'single':
        par = 'one device (no data parallelism)'
    elif e.mode == 'ddp':
        par = 'DDP (unsharded)'
    else:
        mixed = plan.setup.parallel.mixed if plan.setup.amp else 'fp32'
        par = f'FSDP {e.mode} over {e.shard}, mixed precision {mixed}'
    ac = 'on' if e.ac else 'off'
    return f'{c.world} x {c.gpu} ({c.memory / GiB:.1f} GiB each), {nodes}; {par}; activation checkpointing {ac}; ' \
        f'precision {plan.setup.precision}'


def text(plan: Plan) -> str:
    mem, sp, st = plan.memory, plan.speed, plan.setup
    L: list[str] = []
    L.append(f'model     {describe_model(plan)}')
    L.append(f'cluster   {describe_cluster(plan)}')
    auto = " ('auto' resolved as Composer would)" if plan.auto_microbatch else ''
    L.append(f'batch     seq {st.batch.seq_len}, per-GPU batch {mem.device_batch}, microbatch {mem.microbatch}{auto}'
             f' ({mem.accum} accumulation step{"s" if mem.accum > 1 else ""})')
    L.append('')
    L.append('memory per GPU                           GiB   how')
    for k in _ORDER:
        t = mem.terms.get(k)
        if t is None or (t.bytes == 0 and k not in ('weights', 'gradients', 'optimizer')):
            continue
        if k == 'fragmentation':
            others = ', '.join(f'{p} {_g(v)}' for p, v in mem.phases.items() if p != mem.peak_phase)
            L.append(f'  {"= peak allocated (" + mem.peak_phase + ")":<37} {_g(mem.allocated):>6}   others: {others}')
        L.append(f'  {t.label:<37} {_g(t.bytes):>6}   {t.note}')
    verdict = mem.verdict
    pct = 100 * mem.headroom / mem.capacity
    L.append(f'  {"= total":<37} {_g(mem.total):>6}   of {_g(mem.capacity)} GiB: {verdict}, '
             f'{"headroom" if mem.fits else "short by"} {_g(abs(mem.headroom))} GiB ({abs(pct):.0f}%)')
    h = mem.host
    if h:
        parts = ', '.join(f'{k} {_g(v)}' for k, v in h.items())
        L.append(f'host RAM per node (GiB): {parts}' + _host_verdict(plan))
        for t in mem.host_terms.values():
            if t.bytes:
                L.append(f'  {t.label:<37} {_g(t.bytes):>6}   {t.note}')
    L.append('')
    L.append(f'FLOPs     {sp.flops_per_token:.4g} per token (6*N_active + 12*n_layers*d_attn*seq, as mfu_monitor); '
             f'{sp.executed_per_token:.4g} executed')
    if sp.tokens_per_s and sp.peak and sp.mfu is not None:
        L.append(f'speed     MFU {sp.mfu:.2f} ({sp.mfu_source}) at {sp.peak / 1e12:.4g} TFLOP/s peak -> '
                 f'{_n(sp.tokens_per_s)} tokens/s ({_n(sp.tokens_per_s / plan.cluster.world)} per GPU), '
                 f'{sp.step_s:.3g} s per optimizer step')
    else:
        L.append(f'speed     unknown: {sp.mfu_source}')
    if sp.run_tokens:
        cost = f', ${sp.cost_usd:,.0f}' if sp.cost_usd is not None else ' (pass --usd-per-gpu-hour for $)'
        run = f'{_dur(sp.days)}, {sp.gpu_hours:,.0f} GPU-hours{cost}' if sp.days is not None else 'time unknown'
        L.append(f'run       {_n(sp.run_tokens)} tokens ({sp.run_tokens_source}): {run}')
    else:
        L.append(f'run       tokens {sp.run_tokens_source}')
    chin = f'{_n(sp.chinchilla_tokens)} tokens (20 x {_n(st.model.counts.total)} params)'
    if sp.chinchilla_ratio:
        chin += f'; this run is {sp.chinchilla_ratio:.2g}x that'
    if st.model.lora:
        chin += ' (a pretraining yardstick; LoRA fine-tunes)'
    L.append(f'chinchilla {chin}')
    L.append(_microbatch_line(plan))
    for n in plan.notes:
        L.append(f'note      {n}')
    if not mem.fits:
        L.append('')
        L.append(_fixes(plan))
    return '\n'.join(L)


def _host_verdict(plan: Plan) -> str:
    if plan.host_fits is None:
        return ' (pass --host-ram-gib for a verdict)'
    return f' of {_g(plan.host_ram or 0)}: ' + ('fits' if plan.host_fits else 'DOES NOT FIT')


def _microbatch_line(plan: Plan) -> str:
    best, rec, mem = plan.largest_microbatch, plan.recommended_microbatch, plan.memory
    if best is None or rec is None:
        return 'microbatch: even 1 sample per GPU does not fit (see the fixes below)'
    why = f'largest that fits: {best}' + (f'; {rec} keeps {100 * TIGHT:.0f}% of the GPU free' if rec != best else '')
    div = max(k for k in range(1, rec + 1) if mem.device_batch % k == 0)
    if div != rec:
        why += f'; {div} divides the per-GPU batch {mem.device_batch}'
    if rec == mem.microbatch:
        return f'microbatch {rec} is the one to use ({why})'
    return f'microbatch recommended {rec} ({why}; planned {mem.microbatch}): device_train_microbatch_size={rec}'


def _fixes(plan: Plan) -> str:
    if not plan.fixes:
        return 'no change found that makes it fit: a smaller model, a shorter sequence or a bigger GPU'
    L = ['to make it fit (cheapest first; throughput per GPU vs this config):']
    for i, f in enumerate(plan.fixes, 1):
        rel = f'{100 * (f.per_gpu_relative - 1):+.0f}% tokens/s per GPU' if f.per_gpu_relative else 'speed unknown'
        L.append(f'  {i}. {f.change}: {_g(f.memory.total)} GiB per GPU ({_g(f.memory.headroom)} headroom), {rel}')
        if f.overrides:
            L.append(f'     {" ".join(f.overrides)}')
    return '\n'.join(L)


def diff(plans: Sequence[tuple[str, Plan]], configs: Sequence[Mapping[str, Any]]) -> str:
    """Term by term, each config against the first: what differs and by how much."""
    (name0, p0), rest = plans[0], plans[1:]
    out: list[str] = []
    for (name, p), cfg in zip(rest, configs[1:]):
        out.append(f'{name0}  ->  {name}')
        out.append(f'  {"GiB per GPU":<42} {"a":>8} {"b":>8} {"b - a":>9}')

        def row(k: str, p: Plan = p) -> tuple[str, float, float]:
            t0, t1 = p0.memory.terms.get(k), p.memory.terms.get(k)
            la, lb = (t0.label if t0 else None), (t1.label if t1 else None)
            label = (la or lb or k) if la == lb or not (la and lb) else la.split(' (')[0]
            return label, t0.bytes if t0 else 0.0, t1.bytes if t1 else 0.0
        keys = [k for k in _ORDER if k in p0.memory.terms or k in p.memory.terms]
        rows = [row(k) for k in keys if k not in ('fragmentation', 'cuda_context')]
        ph = p0.memory.peak_phase if p0.memory.peak_phase == p.memory.peak_phase else \
            f'{p0.memory.peak_phase} / {p.memory.peak_phase}'
        rows.append((f'= peak allocated ({ph})', p0.memory.allocated, p.memory.allocated))
        rows += [row(k) for k in ('fragmentation', 'cuda_context')]
        rows.append(('= total', p0.memory.total, p.memory.total))
        for label, a, b in rows:
            if abs(b - a) < 0.5 * 2 ** 20 and label != '= total':
                continue
            delta = ('+' if b >= a else '-') + _g(abs(b - a))
            out.append(f'  {label:<42} {_g(a):>8} {_g(b):>8} {delta:>9}')
        va = 'fits' if p0.memory.fits else 'does not fit'
        vb = 'fits' if p.memory.fits else 'DOES NOT FIT'
        out.append(f'  verdict: {va} ({_g(p0.memory.headroom)} GiB headroom) -> {vb} ({_g(p.memory.headroom)} GiB)')
        if p0.speed.tokens_per_s and p.speed.tokens_per_s:
            out.append(f'  tokens/s: {_n(p0.speed.tokens_per_s)} -> {_n(p.speed.tokens_per_s)}')
        changed = config_changes(configs[0], cfg)
        if changed:
            out.append('  config differences:')
            out += [f'    {k}: {a!r} -> {b!r}' for k, a, b in changed[:30]]
            if len(changed) > 30:
                out.append(f'    ... and {len(changed) - 30} more')
        out.append('')
    return '\n'.join(out).rstrip()


def _flat(d: Any, prefix: str = '') -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f'{prefix}.{k}' if prefix else str(k)))
        return out
    return {prefix: d}


def config_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    fa, fb = _flat(a), _flat(b)
    skip = ('variables.', 'run_name', 'loggers.', 'save_folder')
    return [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb))
            if fa.get(k) != fb.get(k) and not k.startswith(skip)]


def summary_line(plan: Plan) -> str:
    """One line for the start of a training run."""
    mem, sp = plan.memory, plan.speed
    verdict = mem.verdict.lower() if mem.fits else mem.verdict
    head = f'{_g(abs(mem.headroom))} GiB {"headroom" if mem.fits else "short"}'
    best = plan.recommended_microbatch
    mbs = f'microbatch {mem.microbatch} (recommended: {best if best is not None else "none fits"})'
    line = (f'plan: {_n(plan.setup.model.counts.total)} params on {plan.cluster.world} x {plan.cluster.gpu}: peak '
            f'{_g(mem.total)} of {_g(mem.capacity)} GiB per GPU ({verdict}, {head}, {mem.peak_phase}); {mbs}')
    if sp.tokens_per_s:
        line += f'; ~{_n(sp.tokens_per_s)} tokens/s at MFU {sp.mfu:.2f}'
        if sp.days is not None and sp.run_tokens:
            line += f', {_dur(sp.days)} for {_n(sp.run_tokens)} tokens'
    return line
