"""Closed-form parameter counts of an MPT / foundry_mpt model config (dense or torch_dmoe), no torch.

    python -m foundry_ext.models.params yamls/pretrain/8x1b-top2.yaml [more.yaml ...]

prints total and active (per token) parameters; the yaml header comments quote these numbers and
``tests/test_yamls.py`` checks that they still match. ``tests/test_models_mpt.py`` checks the formula
against models LLM Foundry actually builds.
"""
from __future__ import annotations

import sys
from typing import Any


def mpt_param_counts(model: dict[str, Any]) -> dict[str, int]:
    """{'total', 'active', 'embedding', 'experts'} for an MPT-style model config dict."""
    d, n_layers, vocab = model['d_model'], model['n_layers'], model['vocab_size']
    n_heads = model['n_heads']
    hd = model.get('head_dim') or d // n_heads
    attn = model.get('attn_config') or {}
    ffn = model.get('ffn_config') or {}
    bias = not model.get('no_bias', False)
    atype = attn.get('attn_type', 'multihead_attention')
    kv = {'multiquery_attention': 1}.get(atype, attn.get('kv_n_heads') or n_heads)
    if atype == 'multihead_attention':
        kv = n_heads

    def linear(i, o, b=bias):
        return i * o + (o if b else 0)

    norm = d * (2 if bias else 1)
    attn_p = linear(d, n_heads * hd + 2 * kv * hd) + linear(n_heads * hd, d)
    ftype = ffn.get('ffn_type', 'mptmlp')
    hidden = ffn.get('ffn_hidden_size') or int(d * model.get('expansion_ratio', 4))
    experts = 0
    if ftype == 'torch_dmoe':
        e, k = ffn.get('moe_num_experts', 8), ffn.get('moe_top_k', 2)
        per_expert = (3 if ffn.get('moe_glu', True) else 2) * d * hidden
        ffn_total, ffn_active = d * e + e * per_expert, d * e + k * per_expert
        experts = e * per_expert * n_layers
    elif ftype in ('mptmlp', 'mptglu'):
        ffn_total = linear(d, hidden) * (2 if ftype == 'mptglu' else 1) + linear(hidden, d)
        ffn_active = ffn_total
    else:
        raise ValueError(f'no parameter formula for ffn_type {ftype!r}')
    layer_total = 2 * norm + attn_p + ffn_total
    layer_active = 2 * norm + attn_p + ffn_active
    emb = vocab * d
    if model.get('learned_pos_emb', True) and not attn.get('alibi') and not attn.get('rope'):
        emb += model['max_seq_len'] * d
    head = 0 if model.get('tie_word_embeddings', True) else vocab * d
    total = emb + head + n_layers * layer_total + norm
    active = emb + head + n_layers * layer_active + norm
    return {'total': total, 'active': active, 'embedding': emb + head, 'experts': experts}


def _fmt(n: int) -> str:
    return f'{n:,} ({n / 1e9:.2f}B)' if n >= 1e8 else f'{n:,} ({n / 1e6:.2f}M)'


def header_line(model: dict[str, Any]) -> str:
    c = mpt_param_counts(model)
    return f"# Parameters: total {c['total']:,}, active per token {c['active']:,} (embedding {c['embedding']:,})"


def main(argv: list[str] | None = None) -> int:
    from foundry_ext.config import load
    from foundry_ext.errors import UserError, exit_with
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print('usage: python -m foundry_ext.models.params <config.yaml> ...', file=sys.stderr)
        return 2
    for path in argv:
        try:
            model = load(path)['model']
            c = mpt_param_counts(model)
        except UserError as e:
            return exit_with(e)
        except (KeyError, ValueError, TypeError) as e:
            return exit_with(UserError(f'{path}: cannot count parameters: {e}'))
        print(f"{path}: total {_fmt(c['total'])}, active {_fmt(c['active'])}, embedding {_fmt(c['embedding'])}")
        print(f'  {header_line(model)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
