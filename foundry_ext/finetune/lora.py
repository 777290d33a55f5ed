"""LoRA on ``hf_causal_lm``: ``model.peft_config`` options, checked before anything is built.

LLM Foundry wraps an ``hf_causal_lm`` model in PEFT when ``model.peft_config`` is set; this module
makes that path hard to get wrong:

* :class:`LoraOptions` -- the keys of PEFT's ``LoraConfig`` (typed where it matters, the rarer ones
  passed through), range checks, and ``peft_type: LORA`` / ``task_type: CAUSAL_LM`` filled in
  (LLM Foundry insists on both);
* :func:`check_lora` -- target modules that exist in the model (one line listing the model's module
  names when one does not), LoRA only on ``hf_causal_lm``, FSDP only with ``use_orig_params``
  (frozen base weights and trainable adapters share FSDP units).

The adapter is saved by Composer (``should_save_peft_only``) and by ``hf_checkpointer``;
``foundry-ext export [--merge]`` writes it as a PEFT folder or merged into the base weights. Nothing
here imports torch at module level.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from foundry_ext.errors import UserError
from foundry_ext.validation import one_of, parse, section

__all__ = ['LoraOptions', 'PASS_THROUGH', 'lora_defaults', 'targetable_names', 'unknown_targets', 'check_lora']

# LoraConfig keys accepted as they are (PEFT checks them when it builds the config)
PASS_THROUGH = ('auto_mapping', 'base_model_name_or_path', 'revision', 'inference_mode', 'exclude_modules',
                'layers_to_transform', 'layers_pattern', 'rank_pattern', 'alpha_pattern', 'megatron_config',
                'megatron_core', 'trainable_token_indices', 'loftq_config', 'eva_config', 'corda_config',
                'use_qalora', 'qalora_group_size', 'layer_replication', 'runtime_config', 'lora_bias')
LINEAR_KINDS = ('Linear', 'Embedding', 'Conv1D', 'Conv1d', 'Conv2d', 'Conv3d')


def _lora_fields() -> list[tuple[str, Any, Any]]:
    return [(name, Any, dataclasses.field(default=None)) for name in PASS_THROUGH]


@dataclass
class _LoraCore:
    r: int = 8                                              # adapter rank
    lora_alpha: float = 8                                   # scale = lora_alpha / r (PEFT's default 8)
    lora_dropout: float = 0.0                               # dropout on the adapter's input
    target_modules: Union[list[str], str, None] = None      # names (suffix match), a regex, 'all-linear', or
                                                            # null = PEFT's default for the model type
    bias: str = 'none'                                      # none | all | lora_only
    modules_to_save: Optional[list[str]] = None             # modules trained in full beside the adapters
    use_rslora: bool = False                                # scale lora_alpha / sqrt(r)
    use_dora: bool = False                                  # weight-decomposed LoRA
    fan_in_fan_out: bool = False                            # GPT-2's Conv1D stores weights transposed
    init_lora_weights: Union[bool, str] = True              # True: B = 0, so training starts at the base model
    peft_type: str = 'LORA'
    task_type: str = 'CAUSAL_LM'


def _post_init(self: Any) -> None:
    where = section('model.peft_config')
    if self.r < 1:
        raise UserError(f'{where}.r must be an integer >= 1, got {self.r!r}')
    if not self.lora_alpha > 0:
        raise UserError(f'{where}.lora_alpha must be > 0, got {self.lora_alpha!r}')
    if not 0.0 <= self.lora_dropout < 1.0:
        raise UserError(f'{where}.lora_dropout must be in [0, 1), got {self.lora_dropout!r}')
    try:
        one_of(self.bias, ('none', 'all', 'lora_only'), f'{where}.bias')
    except ValueError as e:
        raise UserError(str(e)) from None
    if str(self.peft_type).upper() != 'LORA':
        raise UserError(f"{where}.peft_type {self.peft_type!r}: only LORA is supported (LLM Foundry's limit)")
    if str(self.task_type).upper() != 'CAUSAL_LM':
        raise UserError(f"{where}.task_type {self.task_type!r}: only CAUSAL_LM is supported")
    if isinstance(self.target_modules, list) and not self.target_modules:
        raise UserError(f'{where}.target_modules is empty; name modules (e.g. [q_proj, v_proj]) or leave it out')


LoraOptions = dataclasses.make_dataclass(
    'LoraOptions', _lora_fields(), bases=(_LoraCore,), namespace={'__post_init__': _post_init,
                                                                  '__doc__': 'model.peft_config (PEFT LoraConfig).'})


def lora_defaults(model: dict[str, Any]) -> list[str]:
    """Fill ``peft_type`` / ``task_type`` in ``model.peft_config`` (in place); notes of what was set."""
    pc = model.get('peft_config')
    if not isinstance(pc, dict):
        return []
    set_ = [f'{k}: {v}' for k, v in (('peft_type', 'LORA'), ('task_type', 'CAUSAL_LM')) if k not in pc]
    pc.setdefault('peft_type', 'LORA')
    pc.setdefault('task_type', 'CAUSAL_LM')
    return [f"model.peft_config: {', '.join(set_)} (the only kinds supported)"] if set_ else []


def targetable_names(model: Any) -> list[str]:
    """Distinct last names of the modules LoRA can wrap (Linear / Embedding / Conv), in model order."""
    out: list[str] = []
    for name, mod in model.named_modules():
        if name and type(mod).__name__ in LINEAR_KINDS:
            leaf = name.rsplit('.', 1)[-1]
            if leaf not in out:
                out.append(leaf)
    return out


def unknown_targets(model: Any, targets: Union[list[str], str, None]) -> list[str]:
    """The entries of ``target_modules`` that match no module (PEFT's matching rules)."""
    import re
    names = [n for n, _ in model.named_modules() if n]
    if targets is None or targets == 'all-linear':
        return []
    if isinstance(targets, str):
        return [] if any(re.fullmatch(targets, n) for n in names) else [targets]
    return [t for t in targets if not any(n == t or n.endswith('.' + t) for n in names)]


def _skeleton(model_cfg: Mapping[str, Any]) -> Any:
    """The model's modules on the meta device (no weights read, nothing downloaded)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    src = str(model_cfg['pretrained_model_name_or_path'])
    trust = bool(model_cfg.get('trust_remote_code', False))
    config = AutoConfig.from_pretrained(src, trust_remote_code=trust)
    for k, v in (model_cfg.get('config_overrides') or {}).items():
        setattr(config, k, v)
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust)


def check_lora(cfg: Mapping[str, Any]) -> Optional[Any]:
    """Everything about ``model.peft_config`` that can be known before training; raises a one-line
    UserError. Returns the parsed options (None without LoRA)."""
    model = cfg.get('model') or {}
    pc = model.get('peft_config') if isinstance(model, Mapping) else None
    if pc is None:
        return None
    opts: Any = parse(LoraOptions, pc, 'model.peft_config')
    if model.get('name') != 'hf_causal_lm':
        raise UserError(f"model.peft_config: LoRA needs model.name hf_causal_lm (got {model.get('name')}); export "
                        'an MPT checkpoint to an HF folder first: foundry-ext export <run> <dir>')
    fsdp = cfg.get('fsdp_config')
    if isinstance(fsdp, Mapping) and fsdp.get('use_orig_params') is False:
        raise UserError('model.peft_config with fsdp_config.use_orig_params: false cannot train: frozen base weights '
                        'and trainable adapters share FSDP units; set use_orig_params: true (the default)')
    src = model.get('pretrained_model_name_or_path')
    if not isinstance(src, str) or not Path(src).expanduser().is_dir():
        return opts   # hub names / missing folders are reported by the folder check
    skeleton = _skeleton(model)
    names = targetable_names(skeleton)
    targets = opts.target_modules
    if targets is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS
        if skeleton.config.model_type not in DEFAULTS:
            raise UserError(f'model.peft_config.target_modules: PEFT has no default for model type '
                            f"{skeleton.config.model_type!r}; name them, e.g. [{', '.join(names[:2])}] "
                            f"(this model's modules: {', '.join(names)})")
    bad = unknown_targets(skeleton, targets)
    if bad:
        raise UserError(f"model.peft_config.target_modules: {', '.join(map(repr, bad))} matches no module of "
                        f"{type(skeleton).__name__}; its module names are: {', '.join(names)}")
    return opts
