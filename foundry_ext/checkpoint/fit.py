"""Does the ``load_path`` checkpoint fit the model? + the parameter counts printed at the start of a run.

:func:`first_mismatch` is the pure check: the first checkpoint tensor whose shape differs from the
model's (or that has no place in it, or, strict, a model tensor the checkpoint lacks), as one line.
The ``model_check`` callback (:mod:`.callback`) runs it; :class:`ModelCheckConfig` are its options.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

__all__ = ['ModelCheckConfig', 'first_mismatch', 'parameter_line']

Shape = tuple[int, ...]


@dataclass
class ModelCheckConfig:
    """``callbacks.model_check`` (the train command adds it when a run sets ``load_path`` or LoRA)."""
    load_path: Optional[str] = None        # the checkpoint to check against the model (the run's load_path)
    strict: bool = True                    # as load_strict_model_weights: missing / extra tensors count too
    ignore_keys: list[str] = field(default_factory=list)   # as load_ignore_keys (state/model/... globs)
    print_parameters: bool = True          # print total / trainable parameters at the start


def _ignored(key: str, patterns: Sequence[str]) -> bool:
    path = f'state/model/{key}'
    return any(fnmatch.fnmatch(path, p) for p in patterns)


def first_mismatch(ckpt: Mapping[str, Shape], model: Mapping[str, Shape], strict: bool = True,
                   ignore: Sequence[str] = (), peft: bool = False) -> Optional[str]:
    """None when every checkpoint tensor fits the model, else one line naming the first that does not.

    ``ignore``: Composer ``load_ignore_keys`` globs (``state/model/<key>``). ``peft``: the model has
    LoRA adapters, whose base weights come from the pretrained folder (missing ones are expected)."""
    ck = {k: tuple(v) for k, v in ckpt.items() if not _ignored(k, ignore)}
    common = [k for k in ck if k in model]
    if ck and not common:
        k0, m0 = next(iter(ck)), next(iter(model), '<none>')
        return (f'none of its {len(ck)} tensors is in the model (checkpoint: {k0}, model: {m0}); it holds another '
                'architecture: use its own model section, or export it (foundry-ext export) and load the HF folder '
                'with hf_causal_lm')
    for k in ck:
        if k in model and tuple(model[k]) != ck[k]:
            return (f'tensor {k} has shape {list(ck[k])} in the checkpoint but {list(model[k])} in the model; the '
                    'checkpoint was trained with another model config (d_model, n_heads, kv_n_heads, vocab_size, ...)')
    if strict:
        extra = [k for k in ck if k not in model]
        if extra:
            return (f'checkpoint tensor {extra[0]} has no place in the model ({len(extra)} such tensors); set '
                    "load_ignore_keys: ['state/model/<key>'] or load_strict_model_weights: false")
        missing = [k for k in model if k not in ck and not peft and 'inv_freq' not in k and 'rotary' not in k]
        if missing:
            return (f'the checkpoint has no tensor {missing[0]} ({len(missing)} model tensors missing); set '
                    'load_strict_model_weights: false to keep those at their initial values')
    return None


def parameter_line(model: Any) -> str:
    params = {id(p): p for p in model.parameters()}.values()   # tied weights once
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    line = f'parameters: {total:,} total, {trainable:,} trainable ({100.0 * trainable / max(1, total):.2f}%)'
    inner = getattr(model, 'model', model)
    cfgs = getattr(inner, 'peft_config', None)
    if isinstance(cfgs, dict) and cfgs:
        c = next(iter(cfgs.values()))
        targets = c.target_modules
        targets = ', '.join(sorted(targets)) if isinstance(targets, (set, list, tuple)) else str(targets)
        line += f'; LoRA r={c.r}, alpha={c.lora_alpha}, dropout={c.lora_dropout} on {targets}'
    return line
