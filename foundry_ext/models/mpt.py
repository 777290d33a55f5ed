"""Thin LLM Foundry adapter over the pure-torch layers in attention.py and moe.py.

Registered through entry points (pyproject.toml), so any LLM Foundry yaml can name them:

- model ``foundry_mpt_causal_lm``: LLM Foundry's MPT with ``attn_config.attn_impl: auto|flash|sdpa|torch``
  (MPT itself accepts only torch|flash) and the MoE auxiliary losses added to the training loss.
- attention class ``foundry_attention`` (``attn_config.attn_type``): MPT's grouped-query attention
  (MHA/GQA/MQA through ``kv_n_heads``) whose attention op is :func:`foundry_ext.models.attention.attention`.
- ffn ``torch_dmoe`` (``ffn_config.ffn_type``): :class:`foundry_ext.models.moe.DroplessMoE`, keyed like
  LLM Foundry's MegaBlocks ffns (``moe_num_experts``, ``moe_top_k``, ``ffn_hidden_size``, ...).
- module init fn ``torch_dmoe``: MPT's ``init_config`` applied to each expert's weights.
- callback ``moe_monitor``: tokens-per-expert balance and dropped tokens per MoE layer.

How the pieces meet MPT: for ``sdpa``/``torch`` the MPT-level ``attn_impl`` is ``torch``, so MPT builds
its additive bias (sequence-id masking, ALiBi, padding) and we hand it to SDPA; when that bias is padding
only and nothing is padded we pass no mask at all, so SDPA can use its causal FlashAttention-2 kernel. For
``flash`` the MPT-level impl is ``flash`` and LLM Foundry's own flash-attn path (varlen for packed
documents) runs. Generation with a KV cache also uses LLM Foundry's implementation.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import torch
from llmfoundry.models.layers.attention import GroupedQueryAttention
from llmfoundry.models.mpt.configuration_mpt import MPTConfig
from llmfoundry.models.mpt.modeling_mpt import ComposerMPTCausalLM

from foundry_ext.models.attention import attention, check_impl, flash_attn_installed, resolve_impl
from foundry_ext.models.config import MoEConfig
from foundry_ext.models.moe import DroplessMoE
from foundry_ext.validation import parse

log = logging.getLogger('foundry_ext')

__all__ = ['FoundryAttention', 'FoundryMPTConfig', 'FoundryMPTCausalLM', 'build_torch_dmoe',
           'torch_dmoe_init', 'translate_attn_config']

_MHA_TYPES = {'multihead_attention', 'grouped_query_attention', 'multiquery_attention', 'foundry_attention'}


class FoundryAttention(GroupedQueryAttention):
    """MPT grouped-query attention with our backend choice (``attn_backend``)."""

    attn_fn: Callable[..., Any]          # the attention op the base class's forward calls

    def __init__(self, d_model: int, n_heads: int, kv_n_heads: Optional[int] = None, attn_backend: str = 'auto',
                 attn_bias_padding_only: bool = False, **kwargs: Any):
        super().__init__(d_model=d_model, n_heads=n_heads, kv_n_heads=kv_n_heads or n_heads, **kwargs)
        check_impl(attn_backend, cuda=True)  # name check only; the device decides at the first call
        self.attn_backend = attn_backend
        self.attn_bias_padding_only = attn_bias_padding_only
        self._mpt_attn_fn = self.attn_fn  # LLM Foundry's op for the MPT-level attn_impl
        self.attn_fn = self._attend

    def _attend(self, query, key, value, n_heads, kv_n_heads, past_key_value=None, softmax_scale=None,
                attn_bias=None, key_padding_mask=None, is_causal=True, dropout_p=0.0, training=False,
                needs_weights=False, attn_logit_softcapping=None, sliding_window_size=-1, **extra):
        if self.attn_impl == 'flash' or past_key_value is not None or needs_weights:
            return self._mpt_attn_fn(query, key, value, n_heads, kv_n_heads, past_key_value=past_key_value,
                                     softmax_scale=softmax_scale, attn_bias=attn_bias,
                                     key_padding_mask=key_padding_mask, is_causal=is_causal, dropout_p=dropout_p,
                                     training=training, needs_weights=needs_weights,
                                     attn_logit_softcapping=attn_logit_softcapping,
                                     sliding_window_size=sliding_window_size, **extra)
        backend = resolve_impl(self.attn_backend, query.device)
        if backend == 'flash':  # auto on a CUDA box with flash-attn, but MPT was configured for torch
            backend = 'sdpa'
        if self.attn_bias_padding_only:
            attn_bias = None  # it only repeated key_padding_mask
            if key_padding_mask is not None and bool(key_padding_mask.all()):
                key_padding_mask = None
        b, s, _ = query.shape
        if attn_bias is not None:  # MPT builds it for max_seq_len: keep its last s rows / key columns, as LLM Foundry
            attn_bias = attn_bias[:, :, max(0, attn_bias.size(2) - s):, max(0, attn_bias.size(3) - key.shape[1]):]
        hd = query.shape[-1] // n_heads
        out = attention(query.view(b, s, n_heads, hd), key.view(b, s, kv_n_heads, hd),
                        value.view(b, s, kv_n_heads, hd), impl=backend, causal=is_causal,
                        key_padding_mask=key_padding_mask, attn_bias=attn_bias, softmax_scale=softmax_scale,
                        dropout_p=dropout_p if training else 0.0, softcap=attn_logit_softcapping,
                        sliding_window=sliding_window_size)
        return out.reshape(b, s, n_heads * hd), None, None


def translate_attn_config(attn: dict, n_heads: int, cuda: bool, flash_installed: bool | None = None) -> dict:
    """Our ``attn_impl`` (auto|flash|sdpa|torch) -> an attn_config MPT accepts, using FoundryAttention."""
    attn = dict(attn or {})
    if attn.get('attn_type') == 'foundry_attention' and 'attn_backend' in attn:
        return attn  # already translated (e.g. a saved config loaded again)
    impl = attn.get('attn_impl', 'auto')
    backend = check_impl(impl, cuda, flash_installed)
    atype = attn.get('attn_type', 'multihead_attention')
    if atype not in _MHA_TYPES:
        return attn  # a custom attention class: leave it alone
    kv = attn.get('kv_n_heads')
    if atype == 'multiquery_attention':
        kv = 1
    elif atype == 'multihead_attention' or kv is None:
        kv = n_heads
    attn.update(attn_type='foundry_attention', kv_n_heads=kv, attn_impl='flash' if backend == 'flash' else 'torch',
                attn_backend=impl, attn_bias_padding_only=not (attn.get('alibi') or attn.get('attn_uses_sequence_id')))
    if attn.get('rope') and 'rope_impl' not in attn and backend != 'flash':
        attn['rope_impl'] = 'hf'  # MPT's default 'dail' rotary needs flash-attn
    return attn


class FoundryMPTConfig(MPTConfig):
    """MPTConfig whose ``attn_impl`` may be auto|flash|sdpa|torch (translated before MPT validates)."""

    attn_config: dict[str, Any]

    def __init__(self, attn_config: Optional[dict] = None, **kwargs: Any):
        # MPT's default attn_config says flash; ours defaults to auto (HF builds default configs too).
        super().__init__(attn_config=dict(attn_config or {'attn_impl': 'auto'}), **kwargs)

    def _validate_config(self) -> None:
        self.attn_config = translate_attn_config(self.attn_config, self.n_heads, torch.cuda.is_available(),
                                                 flash_attn_installed())
        super()._validate_config()


class FoundryMPTCausalLM(ComposerMPTCausalLM):
    """``foundry_mpt_causal_lm``: MPT + our attention backends + MoE aux losses in the training loss."""

    def __init__(self, tokenizer=None, loss_fn: Any = None, **kwargs: Any):
        if loss_fn is None:
            loss_fn = 'fused_crossentropy' if flash_attn_installed() else 'torch_crossentropy'
        super().__init__(tokenizer=tokenizer, loss_fn=loss_fn, **kwargs)
        self.moe_layers = [m for m in self.model.modules() if isinstance(m, DroplessMoE)]

    @property
    def config_class(self) -> type[MPTConfig]:
        return FoundryMPTConfig

    def loss(self, outputs, batch):
        out = super().loss(outputs, batch)
        aux = [m.aux_loss for m in self.moe_layers if m.aux_loss is not None]
        if not aux:
            return out
        moe = torch.stack(aux).mean()  # averaged over layers, like MegaBlocks
        if isinstance(out, dict):
            return {**out, 'total': out['total'] + moe, 'moe_aux': moe}
        return {'total': out + moe, 'loss': out, 'moe_aux': moe}


# ------------------------------------------------------------------------------ MoE ffn

def build_torch_dmoe(d_model: int, expansion_ratio: float, device: Optional[str] = None, bias: bool = False,
                     fc_type: Any = None, **ffn_config: Any) -> DroplessMoE:
    """LLM Foundry ffn builder for ``ffn_type: torch_dmoe`` (options: :class:`MoEConfig`). Experts have
    no biases: they are stacked bias-free weights, so ``bias`` and ``fc_type`` do not apply."""
    del fc_type, bias
    cfg = parse(MoEConfig, {'ffn_type': 'torch_dmoe', **ffn_config}, 'model.ffn_config')
    hidden = cfg.ffn_hidden_size or int(d_model * expansion_ratio)
    return DroplessMoE(d_model, hidden, num_experts=cfg.moe_num_experts, top_k=cfg.moe_top_k, glu=cfg.moe_glu,
                       activation=cfg.activation, capacity_factor=cfg.moe_capacity_factor,
                       loss_weight=cfg.moe_loss_weight, z_loss_weight=cfg.moe_z_loss_weight,
                       normalize_top_k=cfg.moe_normalize_expert_weights, device=device)


def torch_dmoe_init(module: torch.nn.Module, init_fn_, init_div_is_residual=True, div_is_residual: float = 1.0,
                    **kwargs: Any) -> bool:
    """MPT's init function applied per expert (weights stored (in, out), so init the transpose)."""
    if not isinstance(module, DroplessMoE):
        return False
    with torch.no_grad():
        for e in range(module.num_experts):
            for w in (module.w1, module.v1, module.w2):
                if w is not None:
                    init_fn_(w[e].t())
            if init_div_is_residual is not False:
                module.w2[e].div_(div_is_residual)
    return True

