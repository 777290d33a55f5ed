"""Activation memory of one microbatch: what autograd keeps for backward, counted tensor by tensor.

Pure Python. Two templates, one per code base that builds the blocks:

* ``mpt``: LLM Foundry's ``MPTBlock`` (``mpt_causal_lm`` and our ``foundry_mpt_causal_lm``): pre-norm,
  fused ``Wqkv``, MLP / GLU / our ``torch_dmoe`` FFN.
* ``hf``: the Hugging Face Llama family (Llama, Mistral, Mixtral, Qwen2/3 and their MoE variants):
  RMSNorm with an fp32 upcast, separate q/k/v projections, GLU MLP or Mixtral-style experts, LoRA.

Every count below is bytes **per token per layer** unless it says otherwise, and was read off the
tensors autograd saves in the real models (``bench/plan_accuracy.py`` prints them and measures
the peaks). Dtypes: ``a`` = bytes of the compute dtype (2 under ``amp_bf16``, 4 in fp32), ``r`` =
bytes of the residual stream (the dtype of the weights the embedding runs in: 2 with FSDP
``PURE``/``DEFAULT`` mixed precision, 4 with fp32 weights under autocast). Attention kernels:
``flash`` and ``sdpa`` (torch's flash / memory-efficient kernels) keep q, k, v, the output and a
log-sum-exp per head; ``math`` keeps the softmax of the (s x s) scores (fp32) and, under amp, its
low-precision copy. A mask or ALiBi bias that SDPA has to be handed is materialized per layer.
"""
from __future__ import annotations

from dataclasses import dataclass

from foundry_ext.plan.inputs import ModelSpec

# Transient of one block's backward (gradients of its activations in flight), in units of the
# per-token FFN/attention sizes below; calibrated against measured peaks (docs/plan.md).
BWD_FFN_FACTOR = 2.0      # x a * ffn_hidden (dense) or x a * top_k * ffn_hidden (MoE)
BWD_D_FACTOR = 2.0        # x a * d_model
BWD_SCORES_FACTOR = 2.0   # x 4 * n_heads * seq (math attention: grads of the softmax and of the scores)


@dataclass(frozen=True)
class Numerics:
    """Bytes per element of what the model computes in (see the module docstring)."""
    a: int            # activations / compute dtype
    r: int            # residual stream (embedding output)
    ce: int           # cross-entropy (log-softmax) dtype: fp32 under amp
    casts: bool       # amp over fp32 weights: autocast copies weights and per-linear inputs


@dataclass(frozen=True)
class Activations:
    """One microbatch of ``tokens`` tokens (``seq`` per sample)."""
    per_layer: dict[str, float]       # saved for backward by one block (no checkpointing), by part
    layers: int
    block_input: float                # what a checkpointed block keeps: its input
    head: float                       # embedding ids, final norm, lm_head input, rotary tables
    logits: float                     # the logits (Composer keeps them as state.outputs)
    ce_saved: float                   # the loss's saved log-softmax
    ce_backward: float                # extra in the loss backward (gradients of the log-softmax)
    metrics: float                    # Composer's train metrics on the logits, after backward
    layer_backward: float             # transient of one block's backward

    @property
    def layer(self) -> float:
        return sum(self.per_layer.values())

    def saved(self, checkpointing: bool) -> float:
        """Everything kept at the end of the forward, logits excluded."""
        return (self.block_input if checkpointing else self.layer) * self.layers + self.head


def estimate(m: ModelSpec, n: Numerics, tokens: int, seq: int) -> Activations:
    s = m.shape
    batch = max(1, tokens // seq)
    per = _mpt_layer(m, n, seq, batch) if m.template == 'mpt' else _hf_layer(m, n, seq, batch)
    per = {k: v * tokens for k, v in per.items() if v}
    a, v = n.a, s.vocab_size
    extra = 0.0                                               # per microbatch, not per token
    if m.template == 'mpt':
        head: float = 8 + n.r * s.d_model + n.a * s.d_model + 16     # ids, norm_f input, lm_head input, stats
    elif m.lora is None:                                       # ids, final norm (+ its output), lm_head input
        head = 8 + 4 * s.d_model + 4 + 2 * a * s.d_model
        extra = 2 * seq * s.head_dim * a                       # rotary cos/sin, shared by the batch and layers
    else:   # LoRA: the frozen embedding keeps no ids and the first block's input needs no gradient, so
        # its input norm saves nothing: that cancels the final norm's input (4 d + 4) counted here
        head = 0.0
        extra = 2 * seq * s.head_dim * a
    if 'emb' in m.dropout:
        head += s.d_model
    logits = a * v
    if m.final_softcap:
        head += a * v
    if m.loss == 'fused':
        ce_saved, ce_bwd = 4.0, a * v                         # log-sum-exp; the gradient of the logits
    else:
        ce_saved, ce_bwd = n.ce * v + 8, 2 * n.ce * v         # log-softmax (+ targets); its grad in and out
    metrics = (4 * v if n.a != 4 else 0) + 4 * v if m.train_metrics else 0.0
    ffn = s.ffn_hidden * (s.top_k if s.experts > 1 else 1)
    bwd = a * (BWD_FFN_FACTOR * ffn + BWD_D_FACTOR * s.d_model)
    if m.attn == 'math':
        bwd += BWD_SCORES_FACTOR * 4 * s.n_heads * seq
    return Activations(per_layer=per, layers=s.n_layers, block_input=n.r * s.d_model * tokens,
                       head=head * tokens + extra, logits=logits * tokens, ce_saved=ce_saved * tokens,
                       ce_backward=ce_bwd * tokens, metrics=metrics * tokens, layer_backward=bwd * tokens)


def _attn_kernel(m: ModelSpec, n: Numerics, seq: int, batch: int) -> dict[str, float]:
    """What the attention kernel itself keeps (scores, log-sum-exp, masks)."""
    s, a = m.shape, n.a
    out: dict[str, float] = {}
    if m.attn == 'math':
        out['attn_scores'] = 4 * s.n_heads * seq + (a * s.n_heads * seq if a != 4 else 0)
        if 'attn' in m.dropout:
            out['attn_scores'] += (1 + a) * s.n_heads * seq
    else:
        out['attn_lse'] = 4 * s.n_heads
    if m.attn != 'flash':
        if m.attn_mask == 'bias':
            if m.attn == 'math':
                out['attn_mask'] = seq                          # the bias is added, the (b, 1, s, s) mask kept
            else:
                out['attn_mask'] = a * s.n_heads * seq          # (b, h, s, s) bias in the compute dtype
        elif m.attn_mask == 'bool':
            out['attn_mask'] = seq                              # (b, 1, s, s) bool
        elif m.attn == 'math':
            out['attn_mask'] = seq / batch                      # causal only: one (s, s) bool for the batch
    return out


def _mpt_layer(m: ModelSpec, n: Numerics, seq: int, batch: int) -> dict[str, float]:
    s, a, r = m.shape, n.a, n.r
    d, hd, kvd = s.d_model, s.head_dim, s.kv_heads * s.head_dim
    qkv = s.n_heads * hd + 2 * kvd
    gqa = s.kv_heads < s.n_heads
    out: dict[str, float] = {'norms': 2 * r * d + 4 * a, 'norm_out': 2 * a * d}
    rot = 2 * hd * a if m.rope == 'hf' else 0
    if m.attn == 'flash':          # unpadded q, k, v copies, the kernel output and its padded copy
        att = a * (qkv + 2 * d) + rot
    elif m.attn == 'math':         # matmul keeps contiguous copies of q and of the (repeated) k and v
        att = rot + a * d + 2 * a * (d if gqa else kvd) + a * d
    else:
        if m.rope == 'hf':         # rotated q and k are new tensors; qkv survives only as v's base
            q, k = a * d, a * (d if gqa else kvd)
            v = a * d if gqa else a * qkv
        else:                      # q and k are views of the fused qkv, which stays alive
            q, k = a * qkv, a * d if gqa else 0
            v = a * d if gqa else 0
        att = rot + q + k + v + a * d   # + the attention output (the out projection's input)
    out['attention'] = att
    out.update(_attn_kernel(m, n, seq, batch))
    if s.experts > 1:
        k = s.top_k
        out['moe'] = a * k * (2 * d + (4 if s.glu else 2) * s.ffn_hidden) + 4 * s.experts + 44 * k
    else:
        out['mlp'] = a * s.ffn_hidden * (4 if s.glu else 2)
    if 'resid' in m.dropout:
        out['dropout'] = 2 * d
    return out


def _hf_layer(m: ModelSpec, n: Numerics, seq: int, batch: int) -> dict[str, float]:
    s, a = m.shape, n.a
    d, kvd = s.d_model, s.kv_heads * s.head_dim
    lora = m.lora
    adapted = set(lora.targets) if lora else {'q', 'k', 'v', 'o', 'gate', 'up', 'down'}
    full = lora is None
    nb = 4 if n.casts else a       # the normalized output before the weight multiply
    out: dict[str, float] = {'norms': 2 * (4 * d + 4 + (nb * d if full else 0))}
    # inputs the linears keep: one shared copy, or one per linear when autocast casts each input
    groups = ((('q', 'k', 'v'), d), (('gate', 'up'), d))
    kept = 0.0
    for names, width in groups:
        hit = [x for x in names if x in adapted]
        if hit:
            kept += a * width * (len(hit) if n.casts else 1)
    out['norm_out'] = kept
    repeat = m.attn != 'flash' and s.kv_heads < s.n_heads
    att = a * (d + 2 * (d if repeat else kvd))       # rotated q and k, v (repeated for sdpa / eager)
    if m.attn != 'math':
        att += a * d                                 # the kernel's output
    if 'o' in adapted and m.attn != 'flash':
        att += a * d                                 # o_proj's input: a contiguous copy of the output
    out['attention'] = att
    if lora:
        out['lora'] = a * lora.r * len(lora.targets)   # the A projections' outputs
    if m.qk_norm:
        out['qk_norm'] = (4 + (a if full else 0)) * (d + kvd) + 8 * s.n_heads
    kern = _attn_kernel(m, n, seq, batch)
    kern.pop('attn_mask', None)     # HF passes no mask to SDPA for unpadded causal batches
    out.update(kern)
    f = s.ffn_hidden
    per_expert = a * (3 * f + (f if 'down' in adapted else 0))
    if s.experts > 1:
        k = s.top_k
        gathered = a * d * (3 if full else 2 + (1 if {'gate', 'up'} & adapted else 0))
        out['moe'] = k * (gathered + per_expert) + 4 * s.experts + 44 * k
        if s.shared_expert_hidden:
            sf = s.shared_expert_hidden
            out['moe'] += a * (3 * sf + (sf if 'down' in adapted else 0)) + a * d + 8
    else:
        out['mlp'] = per_expert
    if lora and lora.dropout:
        out['lora_dropout'] = 2 * d
    return out
