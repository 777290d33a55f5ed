"""Throughput of the dropless MoE FFN vs a dense FFN with the same active parameters (fwd+bwd).

    python bench/moe_vs_dense.py             # CPU fp32 (or CUDA bf16 when available)
    python bench/moe_vs_dense.py --tokens 8192 --d-model 512 --experts 8 --top-k 2

Anchor: the dense GLU FFN with hidden = top_k * expert_hidden, i.e. exactly the MoE's active expert
parameters (the router's d_model*E extra is included in the MoE's cost). Ours: DroplessMoE (sort tokens by
expert, one matmul per expert). The ratio MoE/dense tokens-per-second is the price of routing; goal
>= 0.5 (routing, gather/scatter and the per-expert loop cost at most as much as the FFN math itself).
Pure torch: runs where only torch is installed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from foundry_ext.models.moe import DroplessMoE  # noqa: E402

GOAL = 0.5


class DenseGLU(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.w1 = nn.Linear(d, hidden, bias=False)
        self.v1 = nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.v1(x))


def tokens_per_s(module, x, steps, warmup, sync, repeats=3):
    def step():
        y = module(x)
        loss = y.float().pow(2).mean()
        if isinstance(module, DroplessMoE):
            loss = loss + module.aux_loss
        loss.backward()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        times.append((time.perf_counter() - t0) / steps)
    return x.shape[0] / statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tokens', type=int, default=None)
    ap.add_argument('--d-model', type=int, default=None)
    ap.add_argument('--expert-hidden', type=int, default=None)
    ap.add_argument('--experts', type=int, default=8)
    ap.add_argument('--top-k', type=int, default=2)
    ap.add_argument('--steps', type=int, default=None)
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device('cuda' if cuda else 'cpu')
    dtype = torch.bfloat16 if cuda else torch.float32
    d = a.d_model or (2048 if cuda else 256)
    h = a.expert_hidden or (4 * d // a.top_k)
    t = a.tokens or (16384 if cuda else 2048)
    steps = a.steps or (20 if cuda else 5)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    moe = DroplessMoE(d, h, num_experts=a.experts, top_k=a.top_k, glu=True).to(device, dtype)
    dense = DenseGLU(d, a.top_k * h).to(device, dtype)
    x = torch.randn(t, d, device=device, dtype=dtype)
    dense_tps = tokens_per_s(dense, x, steps, 2, sync)
    moe_tps = tokens_per_s(moe, x, steps, 2, sync)
    ratio = moe_tps / dense_tps
    dev = torch.cuda.get_device_name() if cuda else 'CPU'
    print(f'device {dev}, {str(dtype)[6:]}, torch {torch.__version__}, threads {torch.get_num_threads()}; '
          f'{t} tokens, d_model {d}, {a.experts} experts x hidden {h}, top-{a.top_k}')
    print(f"{'layer':<34}{'active params':>14}{'tokens/s':>12}")
    dense_p = sum(p.numel() for p in dense.parameters())
    print(f"{'dense GLU (anchor), hidden ' + str(a.top_k * h):<34}{dense_p:>14,}{dense_tps:>12.0f}")
    print(f"{'torch_dmoe (ours)':<34}{moe.active_params():>14,}{moe_tps:>12.0f}")
    print(f'tokens/expert last step: {moe.stats.tokens_per_expert.tolist()} (dropped {moe.stats.dropped})')
    print(f"BENCH moe_vs_dense{'_gpu' if cuda else '_cpu'} ratio={ratio:.2f} goal>={GOAL} "
          f"{'PASS' if ratio >= GOAL else 'MISS'}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
