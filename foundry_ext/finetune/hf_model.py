"""`foundry_hf_causal_lm`: LLM Foundry's ``hf_causal_lm`` that keeps packed examples apart.

Plain ``hf_causal_lm`` drops ``sequence_id`` (the HF forward has no such argument), so in a packed
row every example attends to the ones before it, and positions run on across examples. In
transformers 4.51 restarted ``position_ids`` alone do not help outside flash-attn (SDPA and eager
attention ignore them for masking). For a packed batch this model therefore passes

* SDPA / eager: a 4D block-diagonal causal ``attention_mask`` (with the model's sliding window,
  if any) plus restarted ``position_ids`` — the logits of a packed row equal each example's alone;
* ``flash_attention_2``: restarted ``position_ids`` and no mask (transformers' varlen path).

Unpacked batches (at most one example per row) go through unchanged. Model families whose
attention takes no 4D mask (GPT-2 ...) refuse packed batches in one line; ``config/validate.py``
says so before training starts. The saved checkpoint is the plain HF model's (same keys, same HF
config), so exports and ``hf_checkpointer`` see no difference. All options are ``hf_causal_lm``'s.
"""
from __future__ import annotations

from typing import Any, Mapping

from llmfoundry.models.hf.hf_causal_lm import ComposerHFCausalLM

from foundry_ext.errors import UserError
from foundry_ext.finetune.config import FOUNDRY_HF, PACKABLE_HF
from foundry_ext.finetune.packing import block_causal_mask, is_packed, position_ids

__all__ = ['FoundryHFCausalLM', 'packed_inputs']


def packed_inputs(batch: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """A packed batch -> the same batch with the attention inputs that keep examples apart."""
    import torch
    seq = batch['sequence_id']
    out = dict(batch)
    if out.get('position_ids') is None:
        out['position_ids'] = position_ids(seq)
    impl = getattr(config, '_attn_implementation', None) or 'eager'
    if impl == 'flash_attention_2':
        out['attention_mask'] = None
        return out
    model_type = getattr(config, 'model_type', None)
    if model_type not in PACKABLE_HF:
        raise UserError(f'{FOUNDRY_HF}: model_type {model_type!r} cannot keep packed examples apart (its attention '
                        f'takes no per-example mask; packable: {", ".join(PACKABLE_HF)}); set packing_ratio: null')
    if model_type in ('qwen2', 'qwen3') and getattr(config, 'use_sliding_window', False):
        raise UserError(f'{FOUNDRY_HF}: {model_type} with use_sliding_window cannot be packed; set packing_ratio: null')
    window = getattr(config, 'sliding_window', None) if model_type == 'mistral' else None
    mask = block_causal_mask(seq, torch.float32, window)
    # SDPA takes a boolean mask whatever the compute dtype (bf16 autocast, FSDP mixed precision); eager
    # attention adds the float mask to its scores (type promotion keeps -inf-like values).
    out['attention_mask'] = mask == 0 if impl == 'sdpa' else mask
    return out


class FoundryHFCausalLM(ComposerHFCausalLM):
    """``hf_causal_lm`` + per-example attention for packed rows (options: ``hf_causal_lm``'s)."""

    def forward(self, batch: Any) -> Any:
        if isinstance(batch, Mapping) and is_packed(batch.get('sequence_id')):
            batch = packed_inputs(batch, self.config)
        return super().forward(batch)
