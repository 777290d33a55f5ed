"""Parameters and training FLOPs of a model config: one reader, two accounts (pure, no torch).

:func:`read_shape` is the one place a model config is read: our / LLM Foundry MPT (the yaml's
``model:`` section or ``MPTConfig.to_dict()``: ``d_model``, ``n_layers``, ``attn_config``,
``ffn_config`` incl. ``torch_dmoe`` and megablocks ``mb_moe``/``mb_dmoe``) and Hugging Face Llama /
Mistral / Mixtral / Qwen2 / Qwen3 (+MoE) ``config.json`` dicts. It returns a :class:`ModelShape`;
both accounts read only that:

* :func:`param_counts` -- exact parameter counts (biases and norms included; total, active per
  token, embedding, experts), checked against the models LLM Foundry builds.
* :func:`breakdown` -- training FLOPs per token under the MFU convention (docs/mfu.md, the one of
  LLM Foundry, torchtitan and OLMo-core, so MFU numbers compare)::

      flops_per_token = 6 * N_active + 12 * n_layers * d_attn * seq_len

  ``N_active``: parameters of every matmul a token goes through: attention projections (q, k, v
  with GQA's ``kv_n_heads``, out), the FFN (dense MLP: 2 matrices, GLU: 3; MoE: the router plus
  ``top_k`` of the ``E`` experts) and the **lm_head** (``d_model * vocab``), counted whether or
  not it is tied to the input embedding. Embedding lookups, norms and biases are left out.
  ``12 * n_layers * d_attn * seq_len``: QK^T and AV (2 matmuls, 2 FLOPs per MAC, x3 for forward +
  backward), ``d_attn = n_heads * head_dim``; no causal halving. ``flops_per_token_causal``: the
  same with the (s+1)/2 keys a token sees on average (what a causal kernel executes).

For other models :func:`measure_flops_per_token` counts FLOPs once with ``torch.utils.flop_counter``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

from foundry_ext.errors import UserError

__all__ = ['ModelShape', 'read_shape', 'is_known_config', 'ParamCounts', 'param_counts', 'mpt_param_counts',
           'header_line', 'FlopsBreakdown', 'breakdown', 'mpt_breakdown', 'hf_breakdown', 'flops_per_token',
           'measure_flops_per_token']


@dataclass(frozen=True)
class ModelShape:
    """What the accounts need to know about a decoder-only transformer."""
    family: str                 # 'mpt' | 'hf'
    n_layers: int
    d_model: int
    n_heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_seq_len: int            # 0 when the config does not say
    ffn_hidden: int             # per expert for MoE layers
    glu: bool
    experts: int                # 1 = dense
    top_k: int
    moe_layers: int             # layers whose FFN is the MoE (the rest are dense with dense_hidden)
    dense_hidden: int           # hidden size of the dense FFN layers of a partly-MoE model
    shared_expert_hidden: int   # Qwen2-MoE always-on shared expert (0 = none)
    bias: bool                  # linear layers and norms carry biases (MPT no_bias: false)
    tied_embeddings: bool
    learned_pos_emb: bool       # a (max_seq_len, d_model) position table

    @property
    def d_attn(self) -> int:
        return self.n_heads * self.head_dim


def _int(cfg: Mapping[str, Any], key: str, where: str) -> int:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise UserError(f'{where}{key} must be a positive integer for FLOPs accounting, got {v!r}')
    return v


def is_known_config(cfg: Mapping[str, Any]) -> bool:
    return ('d_model' in cfg and 'n_layers' in cfg) or ('hidden_size' in cfg and 'num_hidden_layers' in cfg)


def read_shape(cfg: Mapping[str, Any]) -> ModelShape:
    """The one reader of model configs (MPT or HF dialect); UserError for anything else."""
    if 'd_model' in cfg and 'n_layers' in cfg:
        return _mpt_shape(cfg)
    if 'hidden_size' in cfg and 'num_hidden_layers' in cfg:
        return _hf_shape(cfg)
    kind = cfg.get('model_type') or cfg.get('name') or 'this model'
    raise UserError(f'no FLOPs formula for {kind} (expected MPT d_model/n_layers or HF hidden_size/'
                    'num_hidden_layers keys); the MFU callback measures it with FlopCounterMode instead')


def _mpt_shape(cfg: Mapping[str, Any]) -> ModelShape:
    w = 'model.'
    d, h, n_layers = _int(cfg, 'd_model', w), _int(cfg, 'n_heads', w), _int(cfg, 'n_layers', w)
    vocab = _int(cfg, 'vocab_size', w)
    attn = cfg.get('attn_config') or {}
    head_dim = cfg.get('head_dim') or d // h
    atype = attn.get('attn_type', 'multihead_attention')
    kv = attn.get('kv_n_heads') or h
    if atype == 'multiquery_attention':
        kv = 1
    elif atype == 'multihead_attention':
        kv = h
    ffn = dict(cfg.get('ffn_config') or {})
    ffn_type = str(ffn.get('ffn_type', 'mptmlp'))
    hidden = ffn.get('ffn_hidden_size') or int(float(cfg.get('expansion_ratio', 4)) * d)
    experts = int(ffn.get('moe_num_experts') or (8 if ffn_type == 'torch_dmoe' else 1))
    top_k = int(ffn.get('moe_top_k') or (2 if experts > 1 else 1))
    if 'moe_glu' in ffn:
        glu = bool(ffn['moe_glu'])
    elif 'glu' in ffn:
        glu = bool(ffn['glu'])
    elif 'mlp_type' in ffn:
        glu = str(ffn['mlp_type']).lower() == 'glu'
    elif 'glu' in ffn_type:
        glu = True
    elif ffn_type in ('mb_moe', 'mb_dmoe', 'mptmlp', 'te_ln_mlp'):
        glu = False  # megablocks' mlp_type defaults to 'mlp'
    else:
        glu = experts > 1  # our MoE FFN defaults to GLU experts
    rope_or_alibi = bool(attn.get('alibi') or attn.get('rope'))
    return ModelShape('mpt', n_layers, d, h, int(kv), int(head_dim), vocab, int(cfg.get('max_seq_len') or 0),
                      int(hidden), glu, experts, top_k, n_layers if experts > 1 else 0, int(hidden), 0,
                      bias=not cfg.get('no_bias', False), tied_embeddings=bool(cfg.get('tie_word_embeddings', True)),
                      learned_pos_emb=bool(cfg.get('learned_pos_emb', True)) and not rope_or_alibi)


def _hf_shape(cfg: Mapping[str, Any]) -> ModelShape:
    w = 'config.'
    d, h = _int(cfg, 'hidden_size', w), _int(cfg, 'num_attention_heads', w)
    n_layers, vocab = _int(cfg, 'num_hidden_layers', w), _int(cfg, 'vocab_size', w)
    head_dim = cfg.get('head_dim') or d // h
    kv = cfg.get('num_key_value_heads') or h
    dense_hidden = _int(cfg, 'intermediate_size', w) if cfg.get('intermediate_size') else 0
    experts = int(cfg.get('num_local_experts') or cfg.get('num_experts') or 1)
    top_k = int(cfg.get('num_experts_per_tok') or 1)
    if experts > 1:
        hidden = int(cfg.get('moe_intermediate_size') or dense_hidden)
        dense_layers = set(cfg.get('mlp_only_layers') or [])
        step = int(cfg.get('decoder_sparse_step') or 1)
        moe_layers = sum(1 for i in range(n_layers) if i not in dense_layers and (i + 1) % step == 0)
    else:
        if not dense_hidden:
            raise UserError('config.intermediate_size must be a positive integer for FLOPs accounting')
        hidden, moe_layers = dense_hidden, 0
    return ModelShape('hf', n_layers, d, h, int(kv), int(head_dim), vocab,
                      int(cfg.get('max_position_embeddings') or cfg.get('seq_len') or 0), hidden, True, experts,
                      top_k, moe_layers, dense_hidden, int(cfg.get('shared_expert_intermediate_size') or 0),
                      bias=False, tied_embeddings=bool(cfg.get('tie_word_embeddings', False)), learned_pos_emb=False)


# ------------------------------------------------------------------------------ matmul params


def _ffn(d_model: int, hidden: int, glu: bool, experts: int, top_k: int) -> tuple[int, int]:
    """(active, total) matmul params of one FFN layer."""
    per_expert = (3 if glu else 2) * d_model * hidden
    if experts <= 1:
        return per_expert, per_expert
    router = d_model * experts
    return router + top_k * per_expert, router + experts * per_expert


def _ffn_layers(s: ModelShape) -> tuple[int, int]:
    """(active, total) FFN matmul params over all layers."""
    if s.experts <= 1:
        a, t = _ffn(s.d_model, s.ffn_hidden, s.glu, 1, 1)
        return s.n_layers * a, s.n_layers * t
    ma, mt = _ffn(s.d_model, s.ffn_hidden, s.glu, s.experts, s.top_k)
    if s.shared_expert_hidden:  # Qwen2-MoE: an always-on shared expert with a scalar gate
        extra = 3 * s.d_model * s.shared_expert_hidden + s.d_model
        ma, mt = ma + extra, mt + extra
    da = (3 if s.glu else 2) * s.d_model * s.dense_hidden
    dense = s.n_layers - s.moe_layers
    return s.moe_layers * ma + dense * da, s.moe_layers * mt + dense * da


def _attn_matmul(s: ModelShape) -> int:
    return s.d_model * s.head_dim * (2 * s.n_heads + 2 * s.kv_heads)  # q + out, k + v


# ------------------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class ParamCounts:
    total: int
    active: int       # per token (MoE: top_k experts)
    embedding: int    # input embedding (+ positions) + an untied lm_head
    experts: int      # all experts' weights (0 for dense models)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def param_counts(s: ModelShape) -> ParamCounts:
    """Exact parameter counts, biases and norms included."""
    d, hd = s.d_model, s.head_dim
    bias = s.bias

    def linear(i: int, o: int) -> int:
        return i * o + (o if bias else 0)

    norm = d * (2 if bias else 1)
    attn = linear(d, s.n_heads * hd + 2 * s.kv_heads * hd) + linear(s.n_heads * hd, d)
    experts = 0
    if s.experts > 1:
        per_expert = (3 if s.glu else 2) * d * s.ffn_hidden
        ffn_total, ffn_active = d * s.experts + s.experts * per_expert, d * s.experts + s.top_k * per_expert
        experts = s.experts * per_expert * s.moe_layers
        dense = (s.n_layers - s.moe_layers) * ((3 if s.glu else 2) * d * s.dense_hidden)
        moe_total, moe_active = s.moe_layers * ffn_total + dense, s.moe_layers * ffn_active + dense
    else:
        one = linear(d, s.ffn_hidden) * (2 if s.glu else 1) + linear(s.ffn_hidden, d)
        moe_total = moe_active = s.n_layers * one
    emb = s.vocab_size * d + (s.max_seq_len * d if s.learned_pos_emb else 0)
    head = 0 if s.tied_embeddings else s.vocab_size * d
    layers = s.n_layers * (2 * norm + attn)
    return ParamCounts(total=emb + head + layers + moe_total + norm, active=emb + head + layers + moe_active + norm,
                       embedding=emb + head, experts=experts)


def mpt_param_counts(model: Mapping[str, Any]) -> dict[str, int]:
    """{'total', 'active', 'embedding', 'experts'} of an MPT-style model config dict."""
    ffn_type = (model.get('ffn_config') or {}).get('ffn_type', 'mptmlp')
    if ffn_type not in ('mptmlp', 'mptglu', 'torch_dmoe'):
        raise ValueError(f'no parameter formula for ffn_type {ffn_type!r}')
    return param_counts(read_shape(model)).as_dict()


def header_line(model: Mapping[str, Any]) -> str:
    """The ``# Parameters: ...`` comment the shipped yamls carry (checked by a test)."""
    c = mpt_param_counts(model)
    return f"# Parameters: total {c['total']:,}, active per token {c['active']:,} (embedding {c['embedding']:,})"


# ------------------------------------------------------------------------------ FLOPs


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
        """The convention (no causal halving): use this for MFU."""
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


def shape_breakdown(s: ModelShape, seq_len: int | None = None) -> FlopsBreakdown:
    seq = seq_len or s.max_seq_len
    if not seq:
        key = 'model.max_seq_len' if s.family == 'mpt' else 'config.max_position_embeddings'
        raise UserError(f'{key} must be a positive integer for FLOPs accounting (or pass the sequence length)')
    fa, ft = _ffn_layers(s)
    return FlopsBreakdown(n_layers=s.n_layers, d_model=s.d_model, d_attn=s.d_attn, seq_len=int(seq),
                          attn_params=s.n_layers * _attn_matmul(s), ffn_active_params=fa, ffn_total_params=ft,
                          lm_head_params=s.d_model * s.vocab_size, embedding_params=s.d_model * s.vocab_size,
                          tied_embeddings=s.tied_embeddings)


def breakdown(cfg: Mapping[str, Any], seq_len: int | None = None) -> FlopsBreakdown:
    return shape_breakdown(read_shape(cfg), seq_len)


def mpt_breakdown(cfg: Mapping[str, Any], seq_len: int | None = None) -> FlopsBreakdown:
    return shape_breakdown(_mpt_shape(cfg), seq_len)


def hf_breakdown(cfg: Mapping[str, Any], seq_len: int | None = None) -> FlopsBreakdown:
    return shape_breakdown(_hf_shape(cfg), seq_len)


def flops_per_token(cfg: Mapping[str, Any], seq_len: int | None = None, causal: bool = False) -> float:
    b = breakdown(cfg, seq_len)
    return b.flops_per_token_causal if causal else b.flops_per_token


def measure_flops_per_token(step: Callable[[], Any], tokens: int) -> float:
    """FLOPs of one call of ``step`` (e.g. forward + backward on a batch) counted by
    ``torch.utils.flop_counter.FlopCounterMode``, divided by ``tokens``: the fallback for models
    with no formula here (counts matmuls and attention kernels, what the convention counts)."""
    from torch.utils.flop_counter import FlopCounterMode
    if tokens <= 0:
        raise UserError(f'tokens must be > 0 to measure FLOPs per token, got {tokens}')
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / tokens
