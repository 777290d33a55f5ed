"""Attention with one entry point and three backends: flash-attn, torch SDPA, plain math.

Pure torch (no Composer / LLM Foundry import), so benchmarks run on a machine with only torch.

    out = attention(q, k, v, impl='auto', causal=True, sequence_id=seq_ids)

Shapes: ``q`` is (batch, seq, n_heads, head_dim); ``k``/``v`` are (batch, seq, kv_n_heads, head_dim)
with ``n_heads % kv_n_heads == 0`` (MHA, GQA, MQA). The result has the shape of ``q``.

Masking (all combinable): causal; ``sequence_id`` (batch, seq) for packed documents, a query attends
only to keys of the same document; ``key_padding_mask`` (batch, seq) True = real token;
``sliding_window`` w >= 0, key j is visible to query i only if |i - j| <= w (LLM Foundry's and
flash-attn's convention); ALiBi through ``alibi_slopes`` (n_heads,), bias -slope*|i-j|; any extra
additive ``attn_bias`` broadcastable to (batch, n_heads, seq, seq) (math and sdpa only).
RoPE is applied to q/k before attention (:func:`apply_rope`), as in MPT and Llama.

``impl``: ``auto`` picks ``flash`` when the flash-attn package is installed and the tensors are on
CUDA, else ``sdpa`` (torch.nn.functional.scaled_dot_product_attention: FlashAttention-2 kernels on
CUDA when only causal masking is used, memory-efficient kernels with a mask), else ``torch``
(the math reference). The choice is logged once per (request, device).
"""
from __future__ import annotations

import importlib.util
import logging
import math

import torch
import torch.nn.functional as F

from foundry_ext.errors import UserError
from foundry_ext.models.config import ATTN_IMPLS
from foundry_ext.validation import did_you_mean

__all__ = ['IMPLS', 'attention', 'resolve_impl', 'flash_attn_installed', 'apply_rope', 'alibi_slopes',
           'allowed_mask']

IMPLS = ATTN_IMPLS
log = logging.getLogger('foundry_ext')
_logged: set = set()


def flash_attn_installed() -> bool:
    return importlib.util.find_spec('flash_attn') is not None


def _has_sdpa() -> bool:
    return hasattr(F, 'scaled_dot_product_attention')


def auto_impl(cuda: bool, flash_installed: bool | None = None) -> str:
    """What ``auto`` picks on a machine with/without CUDA and flash-attn."""
    if flash_installed is None:
        flash_installed = flash_attn_installed()
    if cuda and flash_installed:
        return 'flash'
    return 'sdpa' if _has_sdpa() else 'torch'


def check_impl(impl: str, cuda: bool, flash_installed: bool | None = None) -> str:
    """Validate a requested ``attn_impl`` for a machine; return the backend it resolves to.

    Raises :class:`UserError` (one line) for unknown names and for ``flash`` where it cannot run.
    """
    if impl not in IMPLS:
        raise UserError(f"attn_impl {impl!r} is not one of {', '.join(IMPLS)}{did_you_mean(str(impl), IMPLS)}")
    if flash_installed is None:
        flash_installed = flash_attn_installed()
    if impl == 'auto':
        return auto_impl(cuda, flash_installed)
    if impl == 'flash' and not (cuda and flash_installed):
        why = ' and '.join(w for w, missing in (('the flash-attn package (pip install foundry-ext[gpu])',
                                                   not flash_installed), ('a CUDA device', not cuda)) if missing)
        raise UserError(f"attn_impl flash needs {why}; attn_impl auto would use "
                        f"{auto_impl(cuda, flash_installed)} here")
    if impl == 'sdpa' and not _has_sdpa():
        raise UserError('attn_impl sdpa needs torch>=2.0; use attn_impl torch')
    return impl


def resolve_impl(impl: str, device: torch.device | str | None = None) -> str:
    """Backend for ``impl`` on ``device`` (logged once per combination)."""
    dev = torch.device(device if device is not None else 'cpu')
    backend = check_impl(impl, dev.type == 'cuda')
    key = (impl, dev.type, backend)
    if key not in _logged:
        _logged.add(key)
        log.info('foundry_ext attention: attn_impl=%s on %s -> %s', impl, dev.type, backend)
    return backend


# ------------------------------------------------------------------------------ position helpers


def alibi_slopes(n_heads: int, alibi_bias_max: int = 8, device=None) -> torch.Tensor:
    """ALiBi slopes, the same values as LLM Foundry's ``gen_slopes`` (fp32, shape (n_heads,))."""
    n = 2 ** math.ceil(math.log2(n_heads))
    m = torch.arange(1, n + 1, dtype=torch.float32, device=device) * (alibi_bias_max / n)
    slopes = 1.0 / torch.pow(2, m)
    if n != n_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_heads]
    return slopes


def apply_rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor | None = None,
               theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding (rotate-half form, as HF Llama/MPT hf impl) on (b, s, h, d) q and k."""
    s, d = q.shape[1], q.shape[-1]
    if positions is None:
        positions = torch.arange(s, device=q.device)
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, device=q.device, dtype=torch.float32) / d))
    ang = positions.float()[..., None] * inv  # (s, d/2) or (b, s, d/2)
    emb = torch.cat([ang, ang], dim=-1)
    cos, sin = emb.cos(), emb.sin()
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]

    def rot(x):
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return torch.cat([-x2, x1], dim=-1)

    qf, kf = q.float(), k.float()
    return (qf * cos + rot(qf) * sin).to(q.dtype), (kf * cos + rot(kf) * sin).to(k.dtype)


# ------------------------------------------------------------------------------ masks


def allowed_mask(b: int, s_q: int, s_k: int, device, causal: bool = True, sequence_id=None,
                 key_padding_mask=None, sliding_window: int = -1) -> torch.Tensor | None:
    """Boolean (b or 1, 1, s_q, s_k) mask, True where query i may attend to key j; None = all."""
    off = s_k - s_q  # queries are the last s_q positions
    mask = None

    def _and(a, m):
        return m if a is None else a & m

    if causal or sliding_window >= 0:
        i = torch.arange(s_q, device=device)[:, None] + off
        j = torch.arange(s_k, device=device)[None, :]
        if causal:
            mask = _and(mask, (j <= i)[None, None])
        if sliding_window >= 0:
            mask = _and(mask, ((i - j).abs() <= sliding_window)[None, None])
    if sequence_id is not None:
        sq = sequence_id[:, -s_q:]
        mask = _and(mask, (sq[:, None, :, None] == sequence_id[:, None, None, :]))
    if key_padding_mask is not None:
        mask = _and(mask, key_padding_mask.bool()[:, None, None, :])
    return mask


def _alibi_bias(slopes: torch.Tensor, s_q: int, s_k: int, device) -> torch.Tensor:
    i = torch.arange(s_q, device=device)[:, None] + (s_k - s_q)
    j = torch.arange(s_k, device=device)[None, :]
    return -(slopes.to(device=device, dtype=torch.float32)[:, None, None] * (i - j).abs()[None])[None]


# ------------------------------------------------------------------------------ backends


def _math(q, k, v, scale, mask, bias, dropout_p, softcap):
    b, s_q, h, d = q.shape
    rep = h // k.shape[2]
    qh = q.transpose(1, 2)
    kh = k.transpose(1, 2).repeat_interleave(rep, dim=1)
    vh = v.transpose(1, 2).repeat_interleave(rep, dim=1)
    scores = torch.matmul(qh, kh.transpose(-1, -2)).float() * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, float('-inf'))
    p = torch.softmax(scores, dim=-1).to(vh.dtype)
    if dropout_p:
        p = F.dropout(p, dropout_p)
    return torch.matmul(p, vh).transpose(1, 2)


def _sdpa(q, k, v, scale, mask, bias, dropout_p, causal_only):
    rep = q.shape[2] // k.shape[2]
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if rep > 1:  # enable_gqa needs torch>=2.5 and is not used by every kernel; expand views instead
        kh = kh.repeat_interleave(rep, dim=1)
        vh = vh.repeat_interleave(rep, dim=1)
    if causal_only:
        out = F.scaled_dot_product_attention(qh, kh, vh, dropout_p=dropout_p, is_causal=True, scale=scale)
    else:
        attn_mask = None
        if bias is not None:
            attn_mask = bias.to(q.dtype)
            if mask is not None:
                attn_mask = attn_mask.masked_fill(~mask, float('-inf'))
        elif mask is not None:
            attn_mask = mask
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    return out.transpose(1, 2)


def _segments(b, s, device, sequence_id, key_padding_mask):
    """Packed (varlen) layout: indices of kept tokens and cumulative sequence lengths."""
    keep = torch.ones(b, s, dtype=torch.bool, device=device) if key_padding_mask is None \
        else key_padding_mask.bool()
    seg = torch.zeros(b, s, dtype=torch.long, device=device) if sequence_id is None else sequence_id.long()
    key = torch.arange(b, device=device)[:, None] * (int(seg.max()) + 2) + seg  # documents are contiguous
    idx = keep.flatten().nonzero().flatten()
    _, counts = torch.unique_consecutive(key.flatten()[idx], return_counts=True)
    cu = F.pad(counts.cumsum(0, dtype=torch.int32), (1, 0))
    return idx, cu, int(counts.max())


def _flash(q, k, v, scale, causal, sequence_id, key_padding_mask, sliding_window, slopes, dropout_p, softcap):
    import flash_attn  # noqa: F401  (optional dependency, checked by resolve_impl)
    from flash_attn import flash_attn_func, flash_attn_varlen_func
    kw = dict(dropout_p=dropout_p, softmax_scale=scale, causal=causal,
              window_size=(sliding_window, sliding_window) if sliding_window >= 0 else (-1, -1))
    if softcap:
        kw['softcap'] = softcap
    if slopes is not None:
        kw['alibi_slopes'] = slopes.to(device=q.device, dtype=torch.float32)
    if sequence_id is None and key_padding_mask is None:
        return flash_attn_func(q, k, v, **kw)
    b, s, h, d = q.shape
    idx, cu, max_len = _segments(b, s, q.device, sequence_id, key_padding_mask)
    flat = lambda t: t.reshape(b * s, t.shape[2], d)[idx]  # noqa: E731
    o = flash_attn_varlen_func(flat(q), flat(k), flat(v), cu, cu, max_len, max_len, **kw)
    out = q.new_zeros(b * s, h, d)
    out[idx] = o
    return out.view(b, s, h, d)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, impl: str = 'auto', causal: bool = True,
              sequence_id: torch.Tensor | None = None, key_padding_mask: torch.Tensor | None = None,
              attn_bias: torch.Tensor | None = None, alibi_slopes: torch.Tensor | None = None,
              sliding_window: int = -1, softmax_scale: float | None = None, dropout_p: float = 0.0,
              softcap: float | None = None) -> torch.Tensor:
    """Scaled dot-product attention; see the module docstring for shapes and masks."""
    b, s_q, h, d = q.shape
    s_k, h_kv = k.shape[1], k.shape[2]
    if h % h_kv:
        raise ValueError(f'n_heads ({h}) must be divisible by kv_n_heads ({h_kv})')
    if sliding_window is None:
        sliding_window = -1
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    backend = resolve_impl(impl, q.device)
    if backend == 'flash':
        if attn_bias is not None:
            raise ValueError('attn_impl flash takes no additive attn_bias; use sequence_id, '
                             'key_padding_mask and alibi_slopes, or attn_impl sdpa')
        return _flash(q, k, v, scale, causal, sequence_id, key_padding_mask, sliding_window, alibi_slopes,
                      dropout_p, softcap)
    mask = allowed_mask(b, s_q, s_k, q.device, causal, sequence_id, key_padding_mask, sliding_window)
    empty = None
    if mask is not None and (sequence_id is not None or key_padding_mask is not None):
        # A query with no visible key (e.g. a left-padding position): let it see itself, zero it after.
        empty = ~mask.any(-1, keepdim=True)
        if bool(empty.any()):
            eye = torch.eye(s_q, s_k, dtype=torch.bool, device=q.device)[None, None]
            mask = mask | (empty & eye)
        else:
            empty = None
    bias = None
    if alibi_slopes is not None:
        bias = _alibi_bias(alibi_slopes, s_q, s_k, q.device)
    if attn_bias is not None:
        bias = attn_bias.float() if bias is None else bias + attn_bias.float()
    if backend == 'sdpa' and not softcap:
        causal_only = causal and sliding_window < 0 and bias is None and sequence_id is None \
            and key_padding_mask is None and s_q == s_k
        out = _sdpa(q, k, v, scale, mask, bias, dropout_p, causal_only)
    else:  # math, or sdpa asked for logit soft-capping (which SDPA has no kernel for)
        out = _math(q, k, v, scale, mask, bias, dropout_p, softcap)
    if empty is not None:
        out = out.masked_fill(empty.squeeze(-1).transpose(1, 2)[..., None], 0.0)  # (b, s_q, 1, 1)
    return out
