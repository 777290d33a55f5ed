"""MFU of forward+backward for a ~1B dense model and a ~1B-active MoE model, plain torch (no Composer).

    python bench/mfu_model.py                 # CUDA: bf16, ~1B configs; CPU: tiny smoke configs, SKIP lines
    python bench/mfu_model.py --peak-tflops 989.5 --seq 2048 --batch 8 --steps 20

Needs only torch and this repo's foundry_ext/models/{attention,moe}.py on the path (no composer, no
llmfoundry), so it runs on a GPU box whose image has just torch. The model: pre-norm decoder blocks
(RMSNorm, fused-QKV attention through foundry_ext.models.attention with attn_impl auto -> flash-attn or
SDPA, RoPE) with a dense MLP or the torch_dmoe FFN (DroplessMoE), tied embeddings.

MFU convention (docs/mfu.md): FLOPs/token = 6 * N_active (non-embedding + lm_head) + 12 * n_layers * d_model *
seq_len (no causal halving); the causal-exact variant (attention term halved) is printed beside it.
Goals on one H100: dense >= 0.50, MoE >= 0.35 (anchors: LLM Foundry MPT-1B 42% on 8xH100; published MoE
21-49%). Without CUDA the goals print SKIP.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from foundry_ext.models.attention import apply_rope, attention  # noqa: E402
from foundry_ext.models.moe import DroplessMoE  # noqa: E402
from foundry_ext.throughput import hardware  # noqa: E402

CONFIGS = {
    # name: d_model, n_layers, n_heads, ffn hidden (per expert for MoE), experts, top_k, vocab
    'dense-1b': dict(d=2048, layers=24, heads=16, hidden=8192, experts=0, top_k=0, vocab=50368),
    'moe-1b-active': dict(d=2048, layers=24, heads=16, hidden=4096, experts=8, top_k=2, vocab=50368),
    'dense-tiny': dict(d=128, layers=2, heads=4, hidden=512, experts=0, top_k=0, vocab=1024),
    'moe-tiny': dict(d=128, layers=2, heads=4, hidden=256, experts=4, top_k=2, vocab=1024),
}


class Block(nn.Module):
    def __init__(self, d, heads, hidden, experts, top_k):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        if experts:
            self.ffn = DroplessMoE(d, hidden, num_experts=experts, top_k=top_k, glu=False, activation='gelu')
        else:
            self.ffn = nn.Sequential(nn.Linear(d, hidden, bias=False), nn.GELU(approximate='tanh'),
                                     nn.Linear(hidden, d, bias=False))

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, s, 3, self.heads, d // self.heads).unbind(2)
        q, k = apply_rope(q, k)
        x = x + self.out(attention(q, k, v, impl='auto', causal=True).reshape(b, s, d))
        return x + self.ffn(self.n2(x))


class LM(nn.Module):
    def __init__(self, d, layers, heads, hidden, experts, top_k, vocab):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, hidden, experts, top_k) for _ in range(layers))
        self.norm = nn.RMSNorm(d)

    def forward(self, ids):
        x = self.emb(ids)
        for blk in self.blocks:
            x = blk(x)
        logits = F.linear(self.norm(x), self.emb.weight)
        aux = sum(b.ffn.aux_loss for b in self.blocks if isinstance(b.ffn, DroplessMoE))
        return logits, aux


def active_params(cfg) -> tuple[int, int]:
    """(non-embedding active params + lm_head, total params) — closed form, checked against the module."""
    d, L, h, E, k, V = cfg['d'], cfg['layers'], cfg['hidden'], cfg['experts'], cfg['top_k'], cfg['vocab']
    attn = 4 * d * d
    norms = 2 * d
    if E:
        ffn_active, ffn_total = d * E + k * 2 * d * h, d * E + E * 2 * d * h
    else:
        ffn_active = ffn_total = 2 * d * h
    active = L * (attn + norms + ffn_active) + d + V * d  # lm_head (tied) counts once as compute
    total = L * (attn + norms + ffn_total) + d + V * d
    return active, total


def flops_per_token(cfg, seq) -> tuple[float, float]:
    n_active, _ = active_params(cfg)
    attn = 12 * cfg['layers'] * cfg['d'] * seq
    return 6 * n_active + attn, 6 * n_active + attn / 2


def peak_flops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    if given:
        return given * 1e12, f'given {given} TFLOP/s'
    if device.type != 'cuda':
        return None, 'CPU (no peak: MFU not defined)'
    name = torch.cuda.get_device_name(device)
    if hardware.device_key(name) is not None:
        return hardware.table_peak(name, 'bf16'), f'{name} (table: {hardware.device_key(name)})'
    return None, f'{name} (unknown peak: pass --peak-tflops)'


def run(name, cfg, device, dtype, batch, seq, steps, warmup, compile_):
    torch.manual_seed(0)
    model = LM(**cfg).to(device=device, dtype=dtype)
    active, total = active_params(cfg)
    assert total == sum(p.numel() for p in model.parameters()), 'parameter formula drifted from the module'
    fwd = torch.compile(model) if compile_ else model
    ids = torch.randint(0, cfg['vocab'], (batch, seq + 1), device=device)
    inp, tgt = ids[:, :-1], ids[:, 1:]

    def step():
        logits, aux = fwd(inp)
        loss = F.cross_entropy(logits.float().view(-1, cfg['vocab']), tgt.reshape(-1)) + aux
        loss.backward()
        return loss

    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    dt = (time.perf_counter() - t0) / steps
    tps = batch * seq / dt
    f, f_causal = flops_per_token(cfg, seq)
    del model
    return dict(name=name, active=active, total=total, tps=tps, flops=tps * f, flops_causal=tps * f_causal,
                loss=float(loss), step_s=dt)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--batch', type=int, default=None)
    ap.add_argument('--seq', type=int, default=None)
    ap.add_argument('--steps', type=int, default=None)
    ap.add_argument('--warmup', type=int, default=None)
    ap.add_argument('--peak-tflops', type=float, default=None, help='override the device peak (bf16 dense)')
    ap.add_argument('--compile', action=argparse.BooleanOptionalAction, default=None,
                    help='torch.compile the model (default: on with CUDA)')
    ap.add_argument('--tiny', action='store_true', help='tiny configs even on CUDA (smoke test)')
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device('cuda' if cuda else 'cpu')
    big = cuda and not a.tiny
    names = ('dense-1b', 'moe-1b-active') if big else ('dense-tiny', 'moe-tiny')
    dtype = torch.bfloat16 if cuda else torch.float32
    batch = a.batch or (8 if big else 4)
    seq = a.seq or (2048 if big else 128)
    steps = a.steps or (10 if big else 3)
    warmup = a.warmup if a.warmup is not None else (3 if big else 1)
    compile_ = cuda if a.compile is None else a.compile
    peak, dev_name = peak_flops(device, a.peak_tflops)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    print(f'device: {dev_name}; dtype {str(dtype)[6:]}; batch {batch} x seq {seq}; {steps} timed steps; '
          f'compile {compile_}; torch {torch.__version__}')
    print(f"{'config':<15}{'active':>10}{'total':>10}{'tokens/s':>12}{'TFLOP/s':>10}{'MFU':>8}{'MFU causal':>12}")
    results = {}
    for n in names:
        r = run(n, CONFIGS[n], device, dtype, batch, seq, steps, warmup, compile_)
        mfu = r['flops'] / peak if peak else math.nan
        mfu_c = r['flops_causal'] / peak if peak else math.nan
        results[n] = (r, mfu)
        print(f"{n:<15}{r['active'] / 1e6:>9.1f}M{r['total'] / 1e6:>9.1f}M{r['tps']:>12.0f}"
              f"{r['flops'] / 1e12:>10.3f}{mfu:>8.3f}{mfu_c:>12.3f}")
        if cuda:
            torch.cuda.empty_cache()
    print('anchors: LLM Foundry MPT-1B 42% MFU on 8xH100; published MoE 21-49%')
    for key, n, goal in (('mfu_dense', names[0], 0.50), ('mfu_moe', names[1], 0.35)):
        r, mfu = results[n]
        if not big or peak is None:
            print(f"BENCH {key} mfu=na goal>={goal:.2f} SKIP")
        else:
            print(f"BENCH {key} mfu={mfu:.3f} goal>={goal:.2f} {'PASS' if mfu >= goal else 'MISS'}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
