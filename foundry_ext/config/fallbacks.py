"""Rewrite, in place, what cannot run on this machine into what can (said once per change).

On a machine without CUDA or flash-attn: ``amp_*`` precision -> fp32, FSDP -> DDP, ``flash``
attention of LLM Foundry's MPT -> torch, ``rope_impl: dail`` -> hf, ``fused_crossentropy`` -> torch
cross-entropy, auto micro-batching -> the device batch, and no ``prefetch_factor`` /
``persistent_workers`` with ``num_workers: 0``. A requested ``attn_impl: flash`` of our model is
refused where it cannot run (one line).
"""
from __future__ import annotations

import importlib.util
from typing import Any

from foundry_ext.models.config import FOUNDRY_MPT


def has_flash_attn() -> bool:
    return importlib.util.find_spec('flash_attn') is not None


def apply_fallbacks(cfg: dict[str, Any], cuda: bool, flash_attn: bool, world_size: int = 1) -> list[str]:
    """Rewrite, in place, what cannot run on this machine into what can. Returns one
    message per change, so the caller can log each once."""
    from foundry_ext.config.security import apply_security_defaults
    notes: list[str] = apply_security_defaults(cfg)      # trust_remote_code off unless asked for
    model = cfg.get('model') if isinstance(cfg.get('model'), dict) else None
    if not cuda:
        prec = cfg.get('precision', 'amp_bf16')  # LLM Foundry's default
        if prec != 'fp32':
            cfg['precision'] = 'fp32'
            notes.append(f'precision {prec} needs CUDA; using fp32 on CPU')
        if cfg.get('fsdp_config') is not None:
            cfg['fsdp_config'] = None
            notes.append('fsdp_config needs CUDA; training with DDP (gloo) on CPU instead')
        if cfg.get('device_train_microbatch_size', 'auto') == 'auto':
            per_device = cfg.get('device_train_batch_size')
            if per_device is None and isinstance(cfg.get('global_train_batch_size'), int):
                per_device = max(1, cfg['global_train_batch_size'] // max(1, world_size))
            if per_device is not None:
                cfg['device_train_microbatch_size'] = per_device
                notes.append(f"device_train_microbatch_size 'auto' needs CUDA; using {per_device}")
        if model is not None and model.get('init_device') == 'meta':
            model['init_device'] = 'cpu'
            notes.append('model.init_device meta is for FSDP on GPUs; using cpu')
    if model is not None and model.get('name') == FOUNDRY_MPT:
        # attn_impl flash is a request, not a default here: refuse it where it cannot run.
        from foundry_ext.models.attention import check_impl
        check_impl((model.get('attn_config') or {}).get('attn_impl', 'auto'), cuda, flash_attn)
    if model is not None and model.get('name') in ('mpt_causal_lm', FOUNDRY_MPT) and not flash_attn:
        attn = model.setdefault('attn_config', {})
        if model['name'] == 'mpt_causal_lm' and attn.get('attn_impl', 'flash') == 'flash':
            attn['attn_impl'] = 'torch'
            notes.append('attn_impl flash needs the flash-attn package; using torch attention')
        if attn.get('rope') and attn.get('rope_impl', 'dail' if model['name'] == 'mpt_causal_lm' else 'hf') == 'dail':
            attn['rope_impl'] = 'hf'
            notes.append('rope_impl dail needs the flash-attn package; using the hf rotary embedding')
        if model.get('loss_fn', 'fused_crossentropy' if model['name'] == 'mpt_causal_lm' else None) \
                == 'fused_crossentropy':
            model['loss_fn'] = 'torch_crossentropy'
            notes.append('loss_fn fused_crossentropy needs the flash-attn package; using torch_crossentropy')
    loaders = [('train_loader', cfg.get('train_loader'))]
    if cfg.get('eval_loader') is not None:
        loaders.append(('eval_loader', cfg['eval_loader']))
    loaders += [(f'eval_loaders[{i}]', ev) for i, ev in enumerate(cfg.get('eval_loaders') or [])]
    for where, ld in loaders:
        if not isinstance(ld, dict) or ld.get('name') not in ('text', 'finetuning'):
            continue
        if ld.get('num_workers', 0) == 0:
            changed = ld.get('prefetch_factor') is not None or ld.get('persistent_workers', True)
            ld['prefetch_factor'] = None
            ld['persistent_workers'] = False
            if changed:
                notes.append(f'{where}: num_workers 0 cannot prefetch or persist workers; '
                             'prefetch_factor and persistent_workers turned off')
        if not cuda and ld.get('pin_memory', True):
            ld['pin_memory'] = False
    return notes
