"""Dropless token-choice top-k Mixture-of-Experts FFN in plain PyTorch (runs on CPU and GPU).

Pure torch (no Composer / LLM Foundry import). Routing:

1. router logits ``x @ W_r`` (fp32) -> softmax probabilities p (T, E) -> top-k experts per token;
   with k > 1 the k weights are renormalised to sum to 1 (``normalize_top_k``).
2. the T*k (token, expert) assignments are **sorted by expert** (one stable argsort), the tokens are
   gathered into that order, and each expert runs **one matmul over its contiguous block**
   (a loop over experts, never over tokens); results are weighted, un-permuted and summed per token.
3. dropless by default: every assignment is computed. With ``capacity_factor`` c, each expert keeps
   at most ceil(c * T * k / E) assignments (in token order) and the rest are dropped (their
   contribution is zero, the residual stream carries the token) and counted.

Losses (stored on the module after each forward, the caller adds them to the training loss):
- load balancing (Switch / GShard, MegaBlocks' normalisation): ``E / (T*k) * sum_e c_e * P_e`` where
  c_e = assignments routed to expert e (before dropping) and P_e = mean router probability of e;
  1.0 for perfectly uniform routing. Weighted by ``loss_weight``.
- router z-loss (ST-MoE): ``mean_t logsumexp(logits_t)^2``, weighted by ``z_loss_weight``.

Metrics (detached, on ``module.stats``): tokens per expert, dropped assignments, the losses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['DroplessMoE', 'route', 'load_balancing_loss', 'router_z_loss', 'MoEStats', 'ACTIVATIONS']

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    'silu': F.silu, 'gelu': lambda x: F.gelu(x, approximate='tanh'), 'gelu_exact': F.gelu, 'relu': F.relu}


@dataclass
class MoEStats:
    tokens_per_expert: torch.Tensor  # (E,) assignments routed to each expert (before dropping)
    dropped: int                     # assignments dropped by the capacity limit (0 when dropless)
    assignments: int                 # T * k
    lbl: torch.Tensor                # unweighted load-balancing loss
    z_loss: torch.Tensor             # unweighted router z-loss


def load_balancing_loss(probs: torch.Tensor, expert_idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch/GShard auxiliary loss: E/(T*k) * sum_e count_e * mean_t p[t, e] (1.0 when uniform)."""
    t, k = expert_idx.shape
    counts = torch.bincount(expert_idx.flatten(), minlength=num_experts).to(probs.dtype)
    return num_experts / (t * k) * torch.dot(counts, probs.mean(0))


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


def route(logits: torch.Tensor, top_k: int, normalize_top_k: bool = True):
    """logits (T, E) -> (probs (T, E) fp32, weights (T, k), expert indices (T, k))."""
    probs = torch.softmax(logits.float(), dim=-1)
    weights, idx = torch.topk(probs, top_k, dim=-1)
    if normalize_top_k and top_k > 1:
        weights = weights / weights.sum(-1, keepdim=True)
    return probs, weights, idx


class DroplessMoE(nn.Module):
    """Token-choice top-k MoE FFN: (..., d_model) -> (..., d_model).

    Experts are GLU (``act(x W1) * (x V1) W2``, Llama/Mixtral style) or MLP (``act(x W1) W2``); the
    weights of all experts live in three stacked parameters, (E, d_model, hidden) and (E, hidden, d_model),
    which FSDP shards like any other parameter.
    """

    def __init__(self, d_model: int, ffn_hidden_size: int, num_experts: int = 8, top_k: int = 2,
                 glu: bool = True, activation: str = 'silu', capacity_factor: float | None = None,
                 loss_weight: float = 0.01, z_loss_weight: float = 0.001, normalize_top_k: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f'num_experts must be >= 1, got {num_experts}')
        if not 1 <= top_k <= num_experts:
            raise ValueError(f'top_k ({top_k}) must be between 1 and num_experts ({num_experts})')
        if activation not in ACTIVATIONS:
            raise ValueError(f'activation {activation!r} is not one of {sorted(ACTIVATIONS)}')
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f'capacity_factor must be > 0 or null (dropless), got {capacity_factor}')
        self.d_model, self.hidden, self.num_experts, self.top_k = d_model, ffn_hidden_size, num_experts, top_k
        self.glu, self.activation = glu, activation
        self.capacity_factor, self.normalize_top_k = capacity_factor, normalize_top_k
        self.loss_weight, self.z_loss_weight = loss_weight, z_loss_weight
        kw = dict(device=device, dtype=dtype)
        self.router = nn.Linear(d_model, num_experts, bias=False, **kw)
        self.w1 = nn.Parameter(torch.empty(num_experts, d_model, ffn_hidden_size, **kw))
        self.v1 = nn.Parameter(torch.empty(num_experts, d_model, ffn_hidden_size, **kw)) if glu else None
        self.w2 = nn.Parameter(torch.empty(num_experts, ffn_hidden_size, d_model, **kw))
        self.aux_loss: torch.Tensor | None = None  # weighted lbl + z-loss of the last forward
        self.stats: MoEStats | None = None
        if device is None or torch.device(device).type != 'meta':
            self.reset_parameters()

    def reset_parameters(self, std: float = 0.02, out_std: float | None = None) -> None:
        nn.init.normal_(self.router.weight, std=std)
        nn.init.normal_(self.w1, std=std)
        if self.v1 is not None:
            nn.init.normal_(self.v1, std=std)
        nn.init.normal_(self.w2, std=std if out_std is None else out_std)

    def expert_params(self) -> int:
        return self.w1.numel() + (self.v1.numel() if self.v1 is not None else 0) + self.w2.numel()

    def active_params(self) -> int:
        """Parameters used per token: router + top_k of the E experts."""
        return self.router.weight.numel() + self.expert_params() * self.top_k // self.num_experts

    def capacity(self, num_tokens: int) -> int | None:
        if self.capacity_factor is None:
            return None
        return max(1, math.ceil(self.capacity_factor * num_tokens * self.top_k / self.num_experts))

    def _expert(self, e: int, h: torch.Tensor, weights=None) -> torch.Tensor:
        """Expert e on tokens h; ``weights`` = the unbound (w1, v1, w2) tuples of one forward."""
        if weights is None:
            weights = (self.w1.unbind(0), None if self.v1 is None else self.v1.unbind(0), self.w2.unbind(0))
        w1, v1, w2 = weights
        a = ACTIVATIONS[self.activation](h @ w1[e])
        if v1 is not None:
            a = a * (h @ v1[e])
        return a @ w2[e]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xt = x.reshape(-1, self.d_model)
        t, k, n_e = xt.shape[0], self.top_k, self.num_experts
        logits = self.router(xt)
        probs, weights, idx = route(logits, k, self.normalize_top_k)

        flat_e = idx.flatten()                                    # (T*k,) expert of each assignment
        order = torch.argsort(flat_e, stable=True)                # group assignments by expert
        counts = torch.bincount(flat_e, minlength=n_e)            # (E,)
        token_of = order // k                                     # token of each sorted assignment
        keep = None
        cap = self.capacity(t)
        if cap is not None:
            starts = torch.cumsum(counts, 0) - counts
            pos = torch.arange(order.numel(), device=x.device) - starts[flat_e[order]]
            keep = pos < cap
        sizes = counts.tolist() if keep is None else torch.clamp(counts, max=cap).tolist()
        if keep is not None:
            order, token_of = order[keep], token_of[keep]
        xs = xt[token_of]                                         # (N, d) tokens in expert order
        # unbind once: its backward stacks the E gradients in one op (indexing w[e] per expert would
        # allocate a full-size zero gradient per expert)
        ws = (self.w1.unbind(0), None if self.v1 is None else self.v1.unbind(0), self.w2.unbind(0))
        outs = [self._expert(e, h, ws) for e, h in enumerate(torch.split(xs, sizes)) if sizes[e] > 0]
        ys = torch.cat(outs) if outs else xs.new_zeros(0, self.d_model)
        ys = ys * weights.flatten()[order].to(ys.dtype)[:, None]
        # Un-permute into (T*k, d) (a gather with unique targets: deterministic), then sum over k.
        full = ys.new_zeros(t * k, self.d_model)
        full[order] = ys
        y = full.view(t, k, self.d_model).sum(1)

        lbl = load_balancing_loss(probs, idx, n_e)
        z = router_z_loss(logits)
        self.aux_loss = self.loss_weight * lbl + self.z_loss_weight * z
        dropped = 0 if keep is None else int((~keep).sum())
        self.stats = MoEStats(counts.detach(), dropped, t * k, lbl.detach(), z.detach())
        return y.reshape(shape).to(x.dtype)
