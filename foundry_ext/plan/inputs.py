"""A validated training config -> :class:`TrainSetup`, the typed input of the planner (pure, no torch).

Everything the memory and time model needs is read here, once: the model (through
:func:`foundry_ext.models.accounting.read_shape`, the one reader of model configs), precision, FSDP,
batch sizes, optimizer, LoRA, loaders, checkpointing. What the planner cannot size is refused with
one line naming the key (``UserError``), never guessed: an unknown model family, an unknown
optimizer, keys that change memory in ways the model does not cover (``tp_config``,
``compile_config``, ``fsdp_config.cpu_offload``, megablocks / TransformerEngine layers, ...).
``ignore`` lists keys the user accepts as having no memory effect (``--ignore-key``).
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from foundry_ext.errors import UserError
from foundry_ext.models.accounting import ModelShape, ParamCounts, param_counts, read_shape

HF_TYPES = ('llama', 'mistral', 'mixtral', 'qwen2', 'qwen2_moe', 'qwen3', 'qwen3_moe')
STRATEGIES = ('FULL_SHARD', 'SHARD_GRAD_OP', 'HYBRID_SHARD', '_HYBRID_SHARD_ZERO2', 'NO_SHARD')
MIXED = ('PURE', 'DEFAULT', 'FULL')
# optimizer name -> (fp32 states per trainable parameter, update loops over parameters one at a time)
OPTIMIZERS: dict[str, tuple[int, bool]] = {
    'decoupled_adamw': (2, True), 'adamw': (2, False), 'adam': (2, False), 'decoupled_lionw': (1, True),
    'clip_lion': (1, True), 'adalr_lion': (1, True), 'decoupled_sgdw': (0, True), 'sgd': (0, False)}
# algorithms with no memory effect the planner knows of
SAFE_ALGORITHMS = ('gradient_clipping',)
_MPT_NORMS = ('low_precision_layernorm', 'layernorm', 'rmsnorm', 'low_precision_rmsnorm', 'triton_rmsnorm')
_MPT_FFNS = ('mptmlp', 'mptglu', 'torch_dmoe')
_MPT_ATTN_TYPES = ('multihead_attention', 'grouped_query_attention', 'multiquery_attention', 'foundry_attention')
# LoRA target names (HF Llama-family module names) -> the projection they adapt
_LORA_KINDS = {'q_proj': 'q', 'k_proj': 'k', 'v_proj': 'v', 'o_proj': 'o', 'gate_proj': 'gate',
               'up_proj': 'up', 'down_proj': 'down', 'w1': 'gate', 'w3': 'up', 'w2': 'down'}
_ALL_LINEAR = ('q', 'k', 'v', 'o', 'gate', 'up', 'down')
_DURATION = re.compile(r'^\s*(\d+(?:\.\d+)?)\s*(ba|tok|sp|ep|dur)\s*$')


@dataclass(frozen=True)
class LoraSpec:
    r: int
    targets: tuple[str, ...]     # projections adapted: q k v o gate up down
    params: int                  # trainable LoRA parameters (A and B of every adapted projection)
    dropout: bool                # lora_dropout > 0 (a dropout mask per adapted input)


@dataclass(frozen=True)
class ModelSpec:
    name: str                    # model.name of the yaml
    template: str                # activation template: 'mpt' (LLM Foundry MPT blocks) | 'hf' (Llama family)
    hf_type: str                 # config.json model_type for hf_causal_lm ('' for MPT)
    shape: ModelShape
    counts: ParamCounts
    attn: str                    # attention kernel on the GPU: 'flash' | 'sdpa' | 'math'
    attn_mask: str               # what a non-flash kernel materializes per layer: 'none' | 'bool' | 'bias'
    rope: str                    # 'none' | 'hf' (cos/sin per layer, rotated copies) | 'dail' (fused, in place)
    loss: str                    # 'torch' (log-softmax saved in fp32 under amp) | 'fused' (flash-attn kernel)
    train_metrics: bool          # Composer evaluates train metrics on the logits after each backward
    init_device: str             # cpu | meta | mixed
    lora: LoraSpec | None = None
    qk_norm: bool = False        # Qwen3: RMSNorm on q and k
    dropout: tuple[str, ...] = ()  # 'resid' / 'attn' / 'emb' with p > 0 (masks are saved)
    final_softcap: bool = False

    @property
    def trainable(self) -> int:
        return self.lora.params if self.lora else self.counts.total


@dataclass(frozen=True)
class ParallelSpec:
    fsdp: bool                   # fsdp_config is set (LLM Foundry drops it on 1 GPU)
    strategy: str = 'FULL_SHARD'
    mixed: str = 'DEFAULT'
    ac: bool = False             # activation checkpointing of every transformer block
    ac_reentrant: bool = True
    ac_offload: bool = False     # activation_cpu_offload
    state_dict: str = 'full'     # 'full' | 'sharded'
    shard_degree: int = -1       # data_parallel_shard_degree (-1: the strategy decides)
    prefetch: int = 1            # FSDP units all-gathered ahead of the one computing
    low_precision_grads: bool = False
    whole_model_unit: bool = False   # auto_wrap: false (one FSDP unit)
    orig_params: bool = True


@dataclass(frozen=True)
class OptimSpec:
    name: str
    states: int                  # fp32 tensors per trainable parameter
    per_param: bool              # the update loops over parameters (temporaries of the largest one)
    fused: bool = False


@dataclass(frozen=True)
class BatchSpec:
    global_batch: int | None     # samples per optimizer step (all devices)
    device_batch: int | None     # device_train_batch_size when given instead
    microbatch: int | str | None   # int | 'auto' | None (= the device batch)
    grad_accum: int | None       # device_train_grad_accum
    seq_len: int


@dataclass(frozen=True)
class TrainSetup:
    model: ModelSpec
    parallel: ParallelSpec
    optim: OptimSpec
    batch: BatchSpec
    precision: str               # fp32 | amp_bf16 | amp_fp16 | amp_fp8
    save_weights_only: bool
    hf_checkpointer: bool        # LLM Foundry's hf_checkpointer callback (full HF export on rank 0)
    saves: bool
    workers: int                 # dataloader workers per rank (train + eval loaders)
    duration: tuple[float, str] | None   # max_duration (value, unit) when it is ba/tok/sp
    expandable_segments: bool
    notes: tuple[str, ...] = field(default=())

    @property
    def amp(self) -> bool:
        return self.precision.startswith('amp_')

    def with_(self, **changes: Any) -> TrainSetup:
        """A copy with fields of this setup or of its parts replaced: ``with_(ac=True, microbatch=4)``."""
        parts: dict[str, Any] = {'model': self.model, 'parallel': self.parallel, 'optim': self.optim,
                                 'batch': self.batch}
        top: dict[str, Any] = {}
        for k, v in changes.items():
            for name, part in parts.items():
                if k in fields_of(part):
                    parts[name] = replace(part, **{k: v})
                    break
            else:
                top[k] = v
        return replace(self, **parts, **top)


def fields_of(obj: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(obj)}


def _refuse(key: str, why: str) -> UserError:
    return UserError(f'{key}: {why}; the planner cannot size it (remove it, or pass --ignore-key {key} '
                     'to plan as if it had no memory effect)')


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    v = cfg.get(key, default)
    return default if v is None else v


def read_setup(cfg: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> TrainSetup:
    """The planner's view of a validated training config (``config.load`` + ``config.validate``)."""
    notes: list[str] = []

    def check(key: str, bad: bool, why: str) -> None:
        if bad:
            if key in ignore:
                notes.append(f'{key} ignored (assumed no memory effect)')
            else:
                raise _refuse(key, why)

    for key, why in (('tp_config', 'tensor parallelism is not modeled'),
                     ('compile_config', 'torch.compile changes what is saved for backward')):
        check(key, cfg.get(key) is not None, why)
    for name in (cfg.get('algorithms') or {}):
        check(f'algorithms.{name}', name not in SAFE_ALGORITHMS, 'this algorithm is not modeled')
    model = _read_model(cfg, check, notes)
    parallel = _read_parallel(cfg.get('fsdp_config'), check)
    optim = _read_optim(cfg.get('optimizer') or {}, check)
    batch = _read_batch(cfg)
    precision = str(_get(cfg, 'precision', 'amp_bf16'))
    callbacks = cfg.get('callbacks') or {}
    workers = 0
    loaders = [cfg.get('train_loader')] + ([cfg['eval_loader']] if cfg.get('eval_loader') else []) \
        + list(cfg.get('eval_loaders') or [])
    for ld in loaders:
        if isinstance(ld, Mapping):
            workers += int(_get(ld, 'num_workers', 0))
    md = cfg.get('max_duration')
    m = _DURATION.match(str(md)) if md is not None else None
    duration = (float(m.group(1)), m.group(2)) if m and m.group(2) in ('ba', 'tok', 'sp') else None
    return TrainSetup(model=model, parallel=parallel, optim=optim, batch=batch, precision=precision,
                      save_weights_only=bool(cfg.get('save_weights_only', False)),
                      hf_checkpointer='hf_checkpointer' in callbacks, saves=bool(cfg.get('save_folder')),
                      workers=workers, duration=duration, expandable_segments=bool(cfg.get('expandable_segments')),
                      notes=tuple(notes))


# ------------------------------------------------------------------------------ model


def _read_model(cfg: Mapping[str, Any], check: Any, notes: list[str]) -> ModelSpec:
    model = cfg.get('model') or {}
    name = str(model.get('name'))
    if name in ('mpt_causal_lm', 'foundry_mpt_causal_lm'):
        return _read_mpt(model, name, check)
    if name == 'hf_causal_lm':
        return _read_hf(model, check, notes)
    raise UserError(f"model.name {name!r}: the planner has memory models for mpt_causal_lm, foundry_mpt_causal_lm "
                    "and hf_causal_lm (Llama, Mistral, Mixtral, Qwen2/3 and their MoE variants)")


def _read_mpt(model: Mapping[str, Any], name: str, check: Any) -> ModelSpec:
    shape = read_shape(model)
    attn = dict(model.get('attn_config') or {})
    ffn = dict(model.get('ffn_config') or {})
    ftype = str(ffn.get('ffn_type', 'mptmlp'))
    check('model.ffn_config.ffn_type', ftype not in _MPT_FFNS,
          f'ffn_type {ftype!r} (megablocks / TransformerEngine layers) is not modeled; torch_dmoe is')
    check('model.fc_type', str(model.get('fc_type', 'torch')) not in ('torch', "{'name': 'torch'}")
          and not (isinstance(model.get('fc_type'), Mapping) and model['fc_type'].get('name') == 'torch'),
          'fc_type other than torch is not modeled')
    check('model.block_overrides', bool(model.get('block_overrides')), 'per-block overrides are not modeled')
    check('model.norm_type', str(model.get('norm_type', 'low_precision_layernorm')) not in _MPT_NORMS,
          'this norm type is not modeled')
    atype = str(attn.get('attn_type', 'multihead_attention'))
    check('model.attn_config.attn_type', atype not in _MPT_ATTN_TYPES, 'this attention class is not modeled')
    for key in ('qk_ln', 'qk_gn'):
        check(f'model.attn_config.{key}', bool(attn.get(key)), 'norms on q/k are not modeled for MPT')
    default_impl = 'auto' if name == 'foundry_mpt_causal_lm' else 'flash'
    impl = str(attn.get('attn_impl', default_impl))
    alibi, seq_id = bool(attn.get('alibi')), bool(attn.get('attn_uses_sequence_id'))
    window = int(attn.get('sliding_window_size') or -1) >= 0
    softcap = attn.get('attn_logit_softcapping') is not None
    if impl == 'flash':
        kernel = 'flash'
    elif impl == 'torch':
        kernel = 'math'
    else:  # auto / sdpa: torch SDPA (flash kernel on CUDA); soft-capping falls back to math
        kernel = 'math' if softcap else 'sdpa'
    mask = 'none'
    if kernel != 'flash':
        mask = 'bias' if alibi else ('bool' if seq_id or window else 'none')
    rope = 'none'
    if attn.get('rope'):
        rope = str(attn.get('rope_impl', 'dail' if name == 'mpt_causal_lm' else 'hf'))
        rope = 'hf' if rope != 'dail' else 'dail'
    loss_default = 'fused_crossentropy' if name == 'mpt_causal_lm' else 'torch_crossentropy'
    loss_fn = str(model.get('loss_fn', loss_default))
    check('model.loss_fn', loss_fn not in ('fused_crossentropy', 'torch_crossentropy'), 'this loss is not modeled')
    dropout = tuple(k for k, key in (('resid', 'resid_pdrop'), ('emb', 'emb_pdrop')) if float(model.get(key) or 0) > 0)
    if float(attn.get('attn_pdrop') or 0) > 0:
        dropout += ('attn',)
    return ModelSpec(name=name, template='mpt', hf_type='', shape=shape, counts=param_counts(shape), attn=kernel,
                     attn_mask=mask, rope=rope, loss='fused' if loss_fn == 'fused_crossentropy' else 'torch',
                     train_metrics=bool(model.get('use_train_metrics', True)),
                     init_device=str(model.get('init_device', 'cpu')), dropout=dropout,
                     final_softcap=model.get('final_logit_softcapping') is not None)


def _hf_config(model: Mapping[str, Any]) -> dict[str, Any]:
    src = str(model.get('pretrained_model_name_or_path'))
    path = Path(src).expanduser() / 'config.json'
    if not path.is_file():
        raise UserError(f'model.pretrained_model_name_or_path: no config.json in {src}; the planner reads the '
                        'model shape from it (a local model folder)')
    try:
        conf = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f'{path} is not valid json: {e}') from None
    conf.update(model.get('config_overrides') or {})
    return conf


def _read_hf(model: Mapping[str, Any], check: Any, notes: list[str]) -> ModelSpec:
    conf = _hf_config(model)
    mtype = str(conf.get('model_type'))
    if mtype not in HF_TYPES:
        raise UserError(f"config.json model_type {mtype!r} (model.pretrained_model_name_or_path): the planner has "
                        f"memory models for {', '.join(HF_TYPES)}")
    check('model.load_in_8bit', bool(model.get('load_in_8bit')), '8-bit weights are not modeled')
    shape = read_shape(conf)
    impl = str(model.get('attn_implementation') or 'eager')
    if model.get('use_flash_attention_2'):
        impl = 'flash_attention_2'
    kernels = {'eager': 'math', 'sdpa': 'sdpa', 'flash_attention_2': 'flash'}
    if impl not in kernels:
        raise UserError(f"model.attn_implementation {impl!r}: the planner knows {', '.join(kernels)}")
    peft = model.get('peft_config')
    lora = read_lora(peft, shape, check) if isinstance(peft, Mapping) and peft else None
    return ModelSpec(name='hf_causal_lm', template='hf', hf_type=mtype, shape=shape, counts=param_counts(shape),
                     attn=kernels[impl], attn_mask='none', rope='hf', loss='torch',
                     train_metrics=bool(model.get('use_train_metrics', True)),
                     init_device=str(model.get('init_device', 'cpu')), lora=lora,
                     qk_norm=mtype.startswith('qwen3'))


def read_lora(peft: Mapping[str, Any], s: ModelShape, check: Any) -> LoraSpec:
    """``model.peft_config`` -> the adapted projections and their trainable parameter count."""
    where = 'model.peft_config'
    ptype = str(peft.get('peft_type', 'LORA')).upper()
    if ptype != 'LORA':
        raise UserError(f'{where}.peft_type {ptype!r}: the planner has a memory model for LORA only')
    check(f'{where}.use_dora', bool(peft.get('use_dora')), 'DoRA is not modeled')
    check(f'{where}.modules_to_save', bool(peft.get('modules_to_save')), 'fully trained extra modules are not modeled')
    for key in ('rank_pattern', 'alpha_pattern', 'layers_to_transform'):
        check(f'{where}.{key}', bool(peft.get(key)), 'per-layer LoRA settings are not modeled')
    r = peft.get('r', 8)
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise UserError(f'{where}.r must be a positive integer, got {r!r}')
    targets = peft.get('target_modules')
    kinds: tuple[str, ...]
    if targets in (None, 'all-linear', ['all-linear']):
        kinds = _ALL_LINEAR if targets else ('q', 'v')   # peft's Llama default is q_proj, v_proj
    else:
        names = [str(targets)] if isinstance(targets, str) else [str(t) for t in (targets or [])]
        unknown = [n for n in names if n.split('.')[-1] not in _LORA_KINDS]
        if unknown:
            raise UserError(f'{where}.target_modules {unknown[0]!r}: the planner knows '
                            f"{', '.join(sorted(_LORA_KINDS))} and all-linear")
        kinds = tuple(dict.fromkeys(_LORA_KINDS[n.split('.')[-1]] for n in names))
    d, hd = s.d_model, s.head_dim
    dims = {'q': (d, s.n_heads * hd), 'k': (d, s.kv_heads * hd), 'v': (d, s.kv_heads * hd),
            'o': (s.n_heads * hd, d), 'gate': (d, s.ffn_hidden), 'up': (d, s.ffn_hidden), 'down': (s.ffn_hidden, d)}
    per_layer = 0
    for k in kinds:
        i, o = dims[k]
        mult = s.experts if (k in ('gate', 'up', 'down') and s.experts > 1) else 1
        per_layer += mult * r * (i + o)
    return LoraSpec(r=r, targets=tuple(kinds), params=per_layer * s.n_layers,
                    dropout=float(peft.get('lora_dropout') or 0) > 0)


# ------------------------------------------------------------------------------ parallelism, optimizer, batch


def _read_parallel(fc: Mapping[str, Any] | None, check: Any) -> ParallelSpec:
    if not fc:
        return ParallelSpec(fsdp=False)
    w = 'fsdp_config'
    strategy = str(fc.get('sharding_strategy', 'FULL_SHARD')).upper()
    if strategy not in STRATEGIES:
        raise UserError(f"{w}.sharding_strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    mixed = str(fc.get('mixed_precision', 'DEFAULT')).upper()
    if mixed not in MIXED:
        raise UserError(f"{w}.mixed_precision {fc.get('mixed_precision')!r}: the planner knows {', '.join(MIXED)}")
    check(f'{w}.cpu_offload', bool(fc.get('cpu_offload')), 'parameter CPU offload is not modeled')
    check(f'{w}.ignored_modules', bool(fc.get('ignored_modules')), 'unsharded modules are not modeled')
    check(f'{w}.te_checkpoint_wrapper', bool(fc.get('te_checkpoint_wrapper')), 'TransformerEngine is not modeled')
    sdt = str(fc.get('state_dict_type', 'full'))
    if sdt == 'local':
        sdt = 'sharded'
    prefetch = int(fc.get('backward_prefetch_limit', 1) or 1)
    if fc.get('forward_prefetch'):
        prefetch = max(prefetch, int(fc.get('forward_prefetch_limit', 1) or 1))
    return ParallelSpec(fsdp=True, strategy=strategy, mixed=mixed, ac=bool(fc.get('activation_checkpointing')),
                        ac_reentrant=bool(fc.get('activation_checkpointing_reentrant', True)),
                        ac_offload=bool(fc.get('activation_cpu_offload')), state_dict=sdt,
                        shard_degree=int(fc.get('data_parallel_shard_degree', -1) or -1), prefetch=prefetch,
                        low_precision_grads=bool(fc.get('keep_low_precision_grads')),
                        whole_model_unit=fc.get('auto_wrap', True) is False,
                        orig_params=bool(fc.get('use_orig_params', True)))


def _read_optim(opt: Mapping[str, Any], check: Any) -> OptimSpec:
    name = str(opt.get('name'))
    if name not in OPTIMIZERS:
        raise UserError(f"optimizer.name {name!r}: the planner knows the optimizer states of "
                        f"{', '.join(OPTIMIZERS)}")
    states, per_param = OPTIMIZERS[name]
    if name in ('decoupled_sgdw', 'sgd') and float(opt.get('momentum') or 0) > 0:
        states = 1
    if name in ('adam', 'adamw', 'decoupled_adamw') and opt.get('amsgrad'):
        states = 3
    fused = bool(opt.get('fused'))
    if opt.get('foreach') is False:
        per_param = True
    return OptimSpec(name=name, states=states, per_param=per_param, fused=fused)


def _read_batch(cfg: Mapping[str, Any]) -> BatchSpec:
    mb = cfg.get('device_train_microbatch_size')
    if isinstance(mb, float) and mb.is_integer():
        mb = int(mb)
    if mb is not None and not (isinstance(mb, int) and not isinstance(mb, bool) and mb > 0) and mb != 'auto':
        raise UserError(f"device_train_microbatch_size must be a positive integer or 'auto', got {mb!r}")
    db = cfg.get('device_train_batch_size')
    ga = cfg.get('device_train_grad_accum')
    if ga is not None and ga != 'auto' and (not isinstance(ga, int) or ga <= 0):
        raise UserError(f'device_train_grad_accum must be a positive integer, got {ga!r}')
    seq = int(cfg.get('max_seq_len') or (cfg.get('model') or {}).get('max_seq_len') or 0)
    if seq <= 0:
        raise UserError('max_seq_len must be a positive integer for planning')
    return BatchSpec(global_batch=cfg.get('global_train_batch_size'), device_batch=int(db) if db else None,
                     microbatch=mb, grad_accum=ga if isinstance(ga, int) else None, seq_len=seq)
