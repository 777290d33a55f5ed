"""MPT (LLM Foundry / foundry_mpt_causal_lm) -> Hugging Face Llama: config and weights (pure torch).

An MPT whose architecture *is* Llama's -- RMSNorm, no biases, RoPE (HF or flash-attn's non-interleaved
layout), a SiLU GLU FFN, multi-head / grouped-query / multi-query attention, no extras such as QK
norms, clipping, ALiBi, logit scaling or MoE -- maps tensor for tensor onto ``LlamaForCausalLM``,
which every serving stack loads without ``trust_remote_code``. :func:`llama_blockers` says, for any
other MPT config, exactly which settings stop the mapping (export then writes LLM Foundry's MPT
classes instead). Nothing here imports Composer or LLM Foundry.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

__all__ = ['RMSNORMS', 'llama_blockers', 'mpt_to_llama_config', 'mpt_to_llama_weights', 'kv_heads_of']

RMSNORMS = ('rmsnorm', 'low_precision_rmsnorm', 'triton_rmsnorm')
_MHA = ('multihead_attention', 'grouped_query_attention', 'multiquery_attention', 'foundry_attention')
_SILU = ('silu', 'swish')


def _attn(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return dict(cfg.get('attn_config') or {})


def _ffn(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return dict(cfg.get('ffn_config') or {})


def _act_name(ffn: Mapping[str, Any]) -> str | None:
    act = ffn.get('ffn_act_fn')
    if act is None:
        return None
    return str(act.get('name')) if isinstance(act, Mapping) else str(act)


def kv_heads_of(cfg: Mapping[str, Any]) -> int:
    attn = _attn(cfg)
    h = int(cfg['n_heads'])
    atype = attn.get('attn_type', 'multihead_attention')
    if atype == 'multiquery_attention':
        return 1
    if atype == 'multihead_attention':
        return h
    return int(attn.get('kv_n_heads') or h)


def llama_blockers(cfg: Mapping[str, Any], weights: Mapping[str, Any] | None = None) -> list[str]:
    """Why this MPT config does not map onto Llama (empty: it does), one short phrase each."""
    out: list[str] = []
    attn, ffn = _attn(cfg), _ffn(cfg)
    if cfg.get('norm_type', 'low_precision_layernorm') not in RMSNORMS:
        out.append(f"norm_type {cfg.get('norm_type', 'low_precision_layernorm')} (Llama needs rmsnorm)")
    if not cfg.get('no_bias', False) or (weights is not None and any(k.endswith('.bias') for k in weights)):
        out.append('biases (set no_bias: true)')
    if not attn.get('rope', False) or attn.get('alibi', False) or attn.get('nope', False):
        out.append('positions other than RoPE (alibi / nope / learned)')
    if cfg.get('learned_pos_emb', True) and not attn.get('rope', False):
        out.append('learned position embeddings')
    impl = attn.get('rope_impl', 'dail')
    if attn.get('rope'):
        if impl == 'dail' and (attn.get('rope_dail_config') or {}).get('type', 'original') != 'original':
            out.append('xpos rotary embeddings')
        if impl == 'hf' and (attn.get('rope_hf_config') or {}).get('type', 'no_scaling') not in (
                'no_scaling', 'linear', 'dynamic'):
            out.append('an unknown rope scaling type')
    if attn.get('attn_type', 'multihead_attention') not in _MHA:
        out.append(f"attn_type {attn.get('attn_type')}")
    for key, bad in (('qk_ln', True), ('qk_gn', True)):
        if attn.get(key, False) == bad:
            out.append(f'attn_config.{key}')
    for key in ('clip_qkv', 'softmax_scale', 'attn_logit_softcapping', 'kv_dim'):
        if attn.get(key) is not None:
            out.append(f'attn_config.{key}')
    if attn.get('sliding_window_size', -1) not in (-1, None):
        out.append('sliding-window attention')
    if (attn.get('attn_temperature_tuning') or {}).get('attn_scale', 0.0):
        out.append('attention temperature tuning')
    if ffn.get('ffn_type', 'mptmlp') != 'mptglu':
        out.append(f"ffn_type {ffn.get('ffn_type', 'mptmlp')} (Llama needs mptglu)")
    elif _act_name(ffn) not in _SILU:
        out.append(f"ffn_act_fn {_act_name(ffn) or 'default (gelu)'} (Llama needs silu)")
    for key, neutral in (('logit_scale', None), ('final_logit_softcapping', None), ('block_overrides', None)):
        if cfg.get(key) is not None and cfg.get(key) != neutral:
            out.append(key)
    if float(cfg.get('embedding_fraction', 1.0)) != 1.0:
        out.append('embedding_fraction')
    hd = cfg.get('head_dim')
    if hd is not None and int(hd) * int(cfg['n_heads']) != int(cfg['d_model']):
        out.append('head_dim other than d_model / n_heads')
    return out


def _ffn_hidden(cfg: Mapping[str, Any]) -> int:
    ffn = _ffn(cfg)
    if ffn.get('ffn_hidden_size'):
        return int(ffn['ffn_hidden_size'])
    return int(cfg['d_model'] * cfg.get('expansion_ratio', 4))


def _rope_scaling(attn: Mapping[str, Any]) -> dict[str, Any] | None:
    if attn.get('rope_impl', 'dail') != 'hf':
        return None
    hf = attn.get('rope_hf_config') or {}
    kind = hf.get('type', 'no_scaling')
    if kind == 'no_scaling':
        return None
    return {'rope_type': kind, 'factor': float(hf.get('factor', 1.0))}


def mpt_to_llama_config(cfg: Mapping[str, Any], tokens: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An MPT config dict -> a ``LlamaConfig`` dict. ``tokens``: bos/eos/pad ids from the tokenizer."""
    attn = _attn(cfg)
    d, h = int(cfg['d_model']), int(cfg['n_heads'])
    out: dict[str, Any] = {
        'architectures': ['LlamaForCausalLM'],
        'model_type': 'llama',
        'vocab_size': int(cfg['vocab_size']),
        'hidden_size': d,
        'intermediate_size': _ffn_hidden(cfg),
        'num_hidden_layers': int(cfg['n_layers']),
        'num_attention_heads': h,
        'num_key_value_heads': kv_heads_of(cfg),
        'head_dim': d // h,
        'hidden_act': 'silu',
        'max_position_embeddings': int(cfg.get('max_seq_len', 2048)),
        'rms_norm_eps': float(cfg.get('norm_eps', 1e-5)),
        'rope_theta': float(attn.get('rope_theta', 10000)),
        'rope_scaling': _rope_scaling(attn),
        'attention_bias': False,
        'mlp_bias': False,
        'attention_dropout': 0.0,
        'tie_word_embeddings': bool(cfg.get('tie_word_embeddings', True)),
        'initializer_range': 0.02,
        'use_cache': True,
    }
    for k in ('bos_token_id', 'eos_token_id', 'pad_token_id'):
        v = (tokens or {}).get(k)
        if v is not None:
            out[k] = int(v)
    return out


_BLOCK = re.compile(r'^transformer\.blocks\.(\d+)\.(.+)$')
_BLOCK_MAP = {
    'norm_1.weight': 'input_layernorm.weight',
    'norm_2.weight': 'post_attention_layernorm.weight',
    'attn.out_proj.weight': 'self_attn.o_proj.weight',
    'attn.Wq.weight': 'self_attn.q_proj.weight',
    'attn.Wk.weight': 'self_attn.k_proj.weight',
    'attn.Wv.weight': 'self_attn.v_proj.weight',
    'ffn.gate_proj.weight': 'mlp.gate_proj.weight',
    'ffn.up_proj.weight': 'mlp.up_proj.weight',
    'ffn.down_proj.weight': 'mlp.down_proj.weight',
}


def mpt_to_llama_weights(cfg: Mapping[str, Any], weights: Mapping[str, Any]) -> dict[str, Any]:
    """MPT tensors (HF-model keys, ``transformer.*``) -> Llama tensors (``model.*``, ``lm_head``).

    The fused ``Wqkv`` is split into q / k / v by the head counts; every MPT tensor must be used
    (a leftover means the config and the weights disagree: ValueError naming it)."""
    d, h = int(cfg['d_model']), int(cfg['n_heads'])
    hd, kv = d // h, kv_heads_of(cfg)
    out: dict[str, Any] = {}
    unused = []
    for key, t in weights.items():
        if key == 'transformer.wte.weight':
            out['model.embed_tokens.weight'] = t
        elif key == 'transformer.norm_f.weight':
            out['model.norm.weight'] = t
        elif key == 'lm_head.weight':
            out['lm_head.weight'] = t
        elif (m := _BLOCK.match(key)) is not None:
            i, rest = m.group(1), m.group(2)
            pre = f'model.layers.{i}.'
            if rest == 'attn.Wqkv.weight':
                if t.shape[0] != (h + 2 * kv) * hd:
                    raise ValueError(f'{key} has {t.shape[0]} rows but n_heads {h} + 2 x kv_n_heads {kv} of '
                                     f'head_dim {hd} make {(h + 2 * kv) * hd}')
                q, k, v = t.split([h * hd, kv * hd, kv * hd], dim=0)
                out[pre + 'self_attn.q_proj.weight'] = q
                out[pre + 'self_attn.k_proj.weight'] = k
                out[pre + 'self_attn.v_proj.weight'] = v
            elif rest in _BLOCK_MAP:
                out[pre + _BLOCK_MAP[rest]] = t
            else:
                unused.append(key)
        elif 'rotary' in key or key.endswith('inv_freq'):
            continue  # buffers recomputed from rope_theta
        else:
            unused.append(key)
    if unused:
        raise ValueError(f'MPT tensor {unused[0]} has no Llama counterpart ({len(unused)} such tensors)')
    if not cfg.get('tie_word_embeddings', True) and 'lm_head.weight' not in out:
        raise ValueError('tie_word_embeddings is false but the checkpoint has no lm_head.weight')
    return out


def default_softmax_scale(cfg: Mapping[str, Any]) -> float:
    return 1.0 / math.sqrt(int(cfg['d_model']) // int(cfg['n_heads']))
