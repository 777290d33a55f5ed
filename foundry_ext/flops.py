"""Training FLOPs per token from a model configuration (pure: no torch, Composer or Foundry import).

Convention (DESIGN.md, the one of LLM Foundry, torchtitan and OLMo-core, so MFU numbers compare):

    flops_per_token = 6 * N_active + 12 * n_layers * d_attn * seq_len

* ``N_active``: parameters of every matmul a token goes through: attention projections
  (q, k, v with GQA's ``kv_n_heads``, out), the FFN (dense MLP: 2 matrices, GLU: 3; MoE: the
  router plus ``top_k`` of the ``E`` experts), and the **lm_head** (``d_model * vocab``),
  counted whether or not it is tied to the input embedding (the lookup costs no FLOPs, the
  output projection does). Embedding lookups, norms and biases are left out.
* ``12 * n_layers * d_attn * seq_len``: QK^T and AV (2 matmuls, 2 FLOPs per MAC, x3 for
  forward + backward), with ``d_attn = n_heads * head_dim`` (the query width; GQA shares K/V
  heads but every query head still attends). No causal halving.
* ``causal``: the same with attention over the (s+1)/2 keys a token actually sees on average,
  logged beside the convention (what a causal kernel such as flash-attn executes).

Config dialects understood: our / LLM Foundry MPT (``d_model``, ``n_layers``, ``attn_config``,
``ffn_config`` incl. ``moe_num_experts``/``moe_top_k``, megablocks ``mb_moe``/``mb_dmoe``) and
Hugging Face Llama / Mistral / Mixtral / Qwen2 / Qwen3 (+MoE) ``config.json`` dicts. For anything
else :func:`measure_flops_per_token` counts FLOPs once with ``torch.utils.flop_counter``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

from foundry_ext.errors import UserError

__all__ = ['FlopsBreakdown', 'flops_per_token', 'mpt_breakdown', 'hf_breakdown', 'measure_flops_per_token',
           'is_known_config']


@dataclass(frozen=True)
class FlopsBreakdown:
    """Per-token accounting of one model at one sequence length."""
    n_layers: int
    d_model: int
    d_attn: int                 # n_heads * head_dim
    seq_len: int
    attn_params: int            # all layers: q, k, v, out projections
    ffn_active_params: int      # all layers: dense FFN, or router + top_k experts
    ffn_total_params: int       # all layers: dense FFN, or router + all experts
    lm_head_params: int
    embedding_params: int       # input embedding (0 extra when tied: shared with the lm_head)
    tied_embeddings: bool

    @property
    def active_params(self) -> int:
        """N_active of the convention: non-embedding matmul params + lm_head."""
        return self.attn_params + self.ffn_active_params + self.lm_head_params

    @property
    def total_params(self) -> int:
        emb = 0 if self.tied_embeddings else self.embedding_params
        return self.attn_params + self.ffn_total_params + self.lm_head_params + emb

    @property
    def attn_flops(self) -> float:
        return 12.0 * self.n_layers * self.d_attn * self.seq_len

    @property
    def flops_per_token(self) -> float:
        """The DESIGN.md convention (no causal halving): use this for MFU."""
        return 6.0 * self.active_params + self.attn_flops

    @property
    def flops_per_token_causal(self) -> float:
        """Causal-exact: a token attends to (s+1)/2 keys on average."""
        return 6.0 * self.active_params + 12.0 * self.n_layers * self.d_attn * (self.seq_len + 1) / 2.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(active_params=self.active_params, total_params=self.total_params,
                 flops_per_token=self.flops_per_token, flops_per_token_causal=self.flops_per_token_causal)
        return d


def _int(cfg: Mapping, key: str, where: str) -> int:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise UserError(f'{where}{key} must be a positive integer for FLOPs accounting, got {v!r}')
    return v


def _ffn(d_model: int, hidden: int, glu: bool, experts: int, top_k: int) -> tuple[int, int]:
    """(active, total) matmul params of one FFN layer."""
    per_expert = (3 if glu else 2) * d_model * hidden
    if experts <= 1:
        return per_expert, per_expert
    router = d_model * experts
    return router + top_k * per_expert, router + experts * per_expert


def _attn(d_model: int, n_heads: int, kv_heads: int, head_dim: int) -> int:
    return d_model * head_dim * (2 * n_heads + 2 * kv_heads)  # q + out, k + v


def mpt_breakdown(cfg: Mapping[str, Any], seq_len: int | None = None) -> FlopsBreakdown:
    """Our / LLM Foundry MPT config (the ``model:`` section of a yaml, or ``MPTConfig.to_dict()``)."""
    w = 'model.'
    d, h, n_layers = _int(cfg, 'd_model', w), _int(cfg, 'n_heads', w), _int(cfg, 'n_layers', w)
    vocab = _int(cfg, 'vocab_size', w)
    seq = seq_len or _int(cfg, 'max_seq_len', w)
    attn = cfg.get('attn_config') or {}
    head_dim = cfg.get('head_dim') or d // h
    kv = attn.get('kv_n_heads') or h
    if attn.get('attn_type') == 'multiquery_attention':
        kv = 1
    elif attn.get('attn_type') == 'multihead_attention':
        kv = h
    ffn = dict(cfg.get('ffn_config') or {})
    ffn_type = str(ffn.get('ffn_type', 'mptmlp'))
    hidden = ffn.get('ffn_hidden_size') or int(float(cfg.get('expansion_ratio', 4)) * d)
    experts = int(ffn.get('moe_num_experts') or 1)
    top_k = int(ffn.get('moe_top_k') or (2 if experts > 1 else 1))
    if 'glu' in ffn:
        glu = bool(ffn['glu'])
    elif 'mlp_type' in ffn:
        glu = str(ffn['mlp_type']).lower() == 'glu'
    elif 'glu' in ffn_type:
        glu = True
    elif ffn_type in ('mb_moe', 'mb_dmoe', 'mptmlp', 'te_ln_mlp'):
        glu = False  # megablocks' mlp_type defaults to 'mlp'
    else:
        glu = experts > 1  # our MoE FFN defaults to GLU experts
    fa, ft = _ffn(d, hidden, glu, experts, top_k)
    tied = bool(cfg.get('tie_word_embeddings', True))
    return FlopsBreakdown(n_layers=n_layers, d_model=d, d_attn=h * head_dim, seq_len=seq,
                          attn_params=n_layers * _attn(d, h, kv, head_dim), ffn_active_params=n_layers * fa,
                          ffn_total_params=n_layers * ft, lm_head_params=d * vocab, embedding_params=d * vocab,
                          tied_embeddings=tied)


def hf_breakdown(cfg: Mapping[str, Any], seq_len: int | None = None) -> FlopsBreakdown:
    """Hugging Face Llama / Mistral / Mixtral / Qwen2(-MoE) / Qwen3(-MoE) ``config.json`` dict."""
    w = 'config.'
    d, h = _int(cfg, 'hidden_size', w), _int(cfg, 'num_attention_heads', w)
    n_layers, vocab = _int(cfg, 'num_hidden_layers', w), _int(cfg, 'vocab_size', w)
    seq = seq_len or int(cfg.get('max_position_embeddings') or 0) or _int(cfg, 'seq_len', w)
    head_dim = cfg.get('head_dim') or d // h
    kv = cfg.get('num_key_value_heads') or h
    dense_hidden = _int(cfg, 'intermediate_size', w) if cfg.get('intermediate_size') else 0
    experts = int(cfg.get('num_local_experts') or cfg.get('num_experts') or 1)
    top_k = int(cfg.get('num_experts_per_tok') or 1)
    attn = n_layers * _attn(d, h, kv, head_dim)
    if experts > 1:
        moe_hidden = int(cfg.get('moe_intermediate_size') or dense_hidden)
        ma, mt = _ffn(d, moe_hidden, True, experts, top_k)
        shared = int(cfg.get('shared_expert_intermediate_size') or 0)
        if shared:  # Qwen2-MoE: an always-on shared expert with a scalar gate
            ma, mt = ma + 3 * d * shared + d, mt + 3 * d * shared + d
        da = 3 * d * dense_hidden
        dense_layers = set(cfg.get('mlp_only_layers') or [])
        step = int(cfg.get('decoder_sparse_step') or 1)
        n_moe = sum(1 for i in range(n_layers) if i not in dense_layers and (i + 1) % step == 0)
        fa = n_moe * ma + (n_layers - n_moe) * da
        ft = n_moe * mt + (n_layers - n_moe) * da
    else:
        if not dense_hidden:
            raise UserError('config.intermediate_size must be a positive integer for FLOPs accounting')
        fa = ft = n_layers * 3 * d * dense_hidden  # gate, up, down
    tied = bool(cfg.get('tie_word_embeddings', False))
    return FlopsBreakdown(n_layers=n_layers, d_model=d, d_attn=h * head_dim, seq_len=seq, attn_params=attn,
                          ffn_active_params=fa, ffn_total_params=ft, lm_head_params=d * vocab,
                          embedding_params=d * vocab, tied_embeddings=tied)


def is_known_config(cfg: Mapping[str, Any]) -> bool:
    return ('d_model' in cfg and 'n_layers' in cfg) or ('hidden_size' in cfg and 'num_hidden_layers' in cfg)


def breakdown(cfg: Mapping[str, Any], seq_len: int | None = None) -> FlopsBreakdown:
    if 'd_model' in cfg and 'n_layers' in cfg:
        return mpt_breakdown(cfg, seq_len)
    if 'hidden_size' in cfg and 'num_hidden_layers' in cfg:
        return hf_breakdown(cfg, seq_len)
    kind = cfg.get('model_type') or cfg.get('name') or 'this model'
    raise UserError(f'no FLOPs formula for {kind} (expected MPT d_model/n_layers or HF hidden_size/'
                    'num_hidden_layers keys); the MFU callback measures it with FlopCounterMode instead')


def flops_per_token(cfg: Mapping[str, Any], seq_len: int | None = None, causal: bool = False) -> float:
    b = breakdown(cfg, seq_len)
    return b.flops_per_token_causal if causal else b.flops_per_token


def measure_flops_per_token(step: Callable[[], Any], tokens: int) -> float:
    """FLOPs of one call of ``step`` (e.g. forward + backward on a batch) counted by
    ``torch.utils.flop_counter.FlopCounterMode``, divided by ``tokens``.

    Counts matmuls and attention kernels (what the convention counts); the fallback for models
    with no formula here.
    """
    from torch.utils.flop_counter import FlopCounterMode
    if tokens <= 0:
        raise UserError(f'tokens must be > 0 to measure FLOPs per token, got {tokens}')
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / tokens
