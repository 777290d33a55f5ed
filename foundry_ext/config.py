"""Load a training yaml + dotlist overrides, validate all of it, apply safe CPU fallbacks.

Everything here runs before torch, Composer or LLM Foundry are imported, so a typo costs a
second, not a 30-second import and a traceback. The schema mirrors LLM Foundry 0.22's
``TrainConfig`` and ``MPTConfig``; ``tests/test_config.py`` checks it has not drifted.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

from foundry_ext.errors import UserError

_NUM = (int, float)
# Top-level keys of llmfoundry.utils.config_utils.TrainConfig -> accepted python types.
TRAIN_KEYS: dict[str, tuple] = {
    'model': (dict,), 'tokenizer': (dict,), 'optimizer': (dict,), 'scheduler': (dict,),
    'train_loader': (dict,), 'device_train_batch_size': _NUM, 'device_eval_batch_size': _NUM,
    'max_duration': (int, str), 'max_seq_len': (int,), 'seed': (int,), 'precision': (str,),
    'code_paths': (list,), 'max_split_size_mb': (int,), 'expandable_segments': (bool,),
    'cuda_load_lazy': (bool,), 'dist_timeout': _NUM, 'fsdp_config': (dict,), 'tp_config': (dict,),
    'accumulate_train_batch_on_tokens': (bool,), 'eval_interval': (int, str), 'eval_loader': (dict,),
    'eval_loaders': (list,), 'icl_tasks': (list, str), 'icl_tasks_str': (str,),
    'eval_gauntlet': (dict, str), 'eval_gauntlet_str': (str,), 'icl_subset_num_batches': (int,),
    'icl_seq_len': (int,), 'loggers': (dict,), 'progress_bar': (bool,), 'log_to_console': (bool,),
    'python_log_level': (str,), 'console_log_interval': (int, str), 'log_config': (bool,),
    'callbacks': (dict,), 'algorithms': (dict,), 'save_folder': (str,), 'save_latest_filename': (str,),
    'save_overwrite': (bool,), 'save_weights_only': (bool,), 'save_filename': (str,),
    'save_interval': (int, str), 'save_num_checkpoints_to_keep': (int,), 'load_path': (str,),
    'load_weights_only': (bool,), 'load_strict_model_weights': (bool,), 'load_ignore_keys': (list,),
    'save_ignore_keys': (list,), 'only_hf_checkpoint': (bool,), 'only_composer_checkpoint': (bool,),
    'train_subset_num_batches': (int,), 'device_train_microbatch_size': (int, float, str),
    'global_train_batch_size': (int,), 'spin_dataloaders': (bool,), 'eval_subset_num_batches': (int,),
    'eval_first': (bool,), 'compile_config': (dict,), 'metadata': (dict,), 'flatten_metadata': (bool,),
    'run_name': (str,), 'autoresume': (bool,), 'profiler': (dict,), 'variables': (dict,),
    'n_gpus': (int,), 'device_train_grad_accum': (int, str),
}
REQUIRED = ('model', 'tokenizer', 'optimizer', 'scheduler', 'train_loader', 'max_duration', 'max_seq_len')

# MPTConfig.__init__ parameters, ComposerMPTCausalLM's own, and a few PretrainedConfig kwargs.
MPT_KEYS: dict[str, tuple] = {
    'name': (str,), 'd_model': (int,), 'n_heads': (int,), 'n_layers': (int,), 'head_dim': (int,),
    'expansion_ratio': _NUM, 'max_seq_len': (int,), 'vocab_size': (int,), 'resid_pdrop': _NUM,
    'emb_pdrop': _NUM, 'learned_pos_emb': (bool,), 'attn_config': (dict,), 'ffn_config': (dict,),
    'init_device': (str,), 'logit_scale': (int, float, str), 'no_bias': (bool,),
    'attention_bias': (bool,), 'embedding_fraction': _NUM, 'norm_type': (str,), 'norm_eps': _NUM,
    'use_cache': (bool,), 'init_config': (dict,), 'fc_type': (str, dict), 'tie_word_embeddings': (bool,),
    'use_pad_tok_in_ffn': (bool,), 'block_overrides': (dict,), 'final_logit_softcapping': _NUM,
    'loss_fn': (str, dict), 'use_train_metrics': (bool,), 'additional_train_metrics': (list,),
    'additional_eval_metrics': (list,), 'pretrained': (bool,), 'torch_dtype': (str,),
    'bos_token_id': (int,), 'eos_token_id': (int,), 'pad_token_id': (int,),
}
ATTN_KEYS = ('alibi', 'alibi_bias_max', 'attn_impl', 'attn_logit_softcapping', 'attn_pdrop',
             'attn_temperature_tuning', 'attn_type', 'attn_uses_sequence_id', 'clip_qkv', 'fused_qkv',
             'kv_dim', 'nope', 'qk_gn', 'qk_ln', 'rope', 'rope_dail_config', 'rope_hf_config',
             'rope_impl', 'rope_theta', 'sliding_window_size', 'softmax_scale', 'kv_n_heads',
             'attn_backend')  # attn_backend: our foundry_attention class (foundry_ext.models.mpt)
# Our model (foundry_ext.models.mpt): MPT whose attn_impl may also be auto or sdpa.
FOUNDRY_MPT = 'foundry_mpt_causal_lm'
ATTN_IMPLS = ('auto', 'flash', 'sdpa', 'torch')
# ffn_config keys of ffn_type torch_dmoe (foundry_ext.models.moe.DroplessMoE), named like LLM Foundry's
# MegaBlocks ffns where they overlap.
MOE_FFN_KEYS = ('ffn_type', 'ffn_hidden_size', 'moe_num_experts', 'moe_top_k', 'moe_glu', 'ffn_act_fn',
                'moe_capacity_factor', 'moe_loss_weight', 'moe_z_loss_weight', 'moe_normalize_expert_weights')
LOADER_KEYS = ('name', 'label', 'dataset', 'drop_last', 'num_workers', 'pin_memory',
               'prefetch_factor', 'persistent_workers', 'timeout')
PRECISIONS = ('fp32', 'amp_fp16', 'amp_bf16', 'amp_fp8')
_DURATION = re.compile(r'^\s*\d+(\.\d+)?\s*(ba|ep|tok|sp|dur)\s*$')
_TYPE_NAMES = {dict: 'a mapping', list: 'a list', int: 'an integer', float: 'a number',
               str: 'a string', bool: 'true/false'}


def _did_you_mean(key: str, choices) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ''


def _type_ok(value: Any, types: tuple) -> bool:
    if value is None:
        return True  # null means "use the default" throughout LLM Foundry
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def _types_str(types: tuple) -> str:
    names = []
    for t in types:
        n = _TYPE_NAMES.get(t, t.__name__)
        if n not in names:
            names.append(n)
    return ' or '.join(names)


# ------------------------------------------------------------------------------ loading


def load(path: str | os.PathLike, overrides: list[str] | None = None) -> dict[str, Any]:
    """yaml + ``key=value`` overrides -> a plain, fully resolved dict."""
    from omegaconf import OmegaConf as om
    from omegaconf.errors import OmegaConfBaseException

    p = Path(path)
    if not p.is_file():
        hint = ''
        if p.suffix in ('.yaml', '.yml') and Path('yamls').is_dir():
            near = difflib.get_close_matches(str(p), [str(x) for x in Path('yamls').rglob('*.yaml')], n=1)
            hint = f'; did you mean {near[0]}?' if near else '; the runnable configs are under yamls/'
        raise UserError(f'config file {p} does not exist{hint}')
    try:
        cfg = om.load(p)
    except Exception as e:  # yaml.YAMLError and friends
        msg = ' '.join(str(e).split())
        raise UserError(f'config file {p} is not valid yaml: {msg}') from None
    for o in overrides or []:
        if '=' not in o:
            raise UserError(f"override {o!r} is not key=value; write e.g. optimizer.lr=3e-4")
    try:
        if overrides:
            cfg = om.merge(cfg, om.from_dotlist(list(overrides)))
        data = om.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise UserError(f'cannot resolve config {p}: {msg}') from None
    if not isinstance(data, dict):
        raise UserError(f'config file {p} must be a mapping of keys to values at the top level')
    return data


# ------------------------------------------------------------------------------ validating


def _check_keys(section: dict, schema, where: str, problems: list[str]) -> None:
    typed = isinstance(schema, dict)
    for k, v in section.items():
        if k not in schema:
            problems.append(f'unknown key {where}{k}{_did_you_mean(k, schema)}')
        elif typed and not _type_ok(v, schema[k]):
            problems.append(f'{where}{k} must be {_types_str(schema[k])}, got {type(v).__name__} {v!r}')


def _positive_int(section: dict, key: str, where: str, problems: list[str]) -> None:
    v = section.get(key)
    if isinstance(v, int) and not isinstance(v, bool) and v <= 0:
        problems.append(f'{where}{key} must be > 0, got {v}')


def _is_local_path(name: str) -> bool:
    return name.startswith(('/', './', '../', '~')) or Path(name).exists() or Path(name.split('/')[0]).is_dir()


def _check_model(model: dict, problems: list[str]) -> None:
    name = model.get('name')
    if name is None:
        problems.append('model.name is missing; e.g. mpt_causal_lm or hf_causal_lm')
        return
    if name in ('mpt_causal_lm', FOUNDRY_MPT):
        _check_keys(model, MPT_KEYS, 'model.', problems)
        for k in ('d_model', 'n_heads', 'n_layers', 'max_seq_len', 'vocab_size'):
            _positive_int(model, k, 'model.', problems)
        d, h = model.get('d_model'), model.get('n_heads')
        if isinstance(d, int) and isinstance(h, int) and h > 0 and d % h:
            problems.append(f'model.d_model ({d}) must be divisible by model.n_heads ({h})')
        attn = model.get('attn_config') or {}
        if isinstance(attn, dict):
            _check_keys(attn, ATTN_KEYS, 'model.attn_config.', problems)
            impl = attn.get('attn_impl')
            if name == FOUNDRY_MPT:
                if impl is not None and impl not in ATTN_IMPLS:
                    problems.append(f"model.attn_config.attn_impl {impl!r} is not one of {', '.join(ATTN_IMPLS)}"
                                    f'{_did_you_mean(str(impl), ATTN_IMPLS)}')
            elif impl in ('auto', 'sdpa'):
                problems.append(f"model.attn_config.attn_impl {impl!r} needs model.name: {FOUNDRY_MPT} "
                                "(mpt_causal_lm accepts only 'torch' or 'flash')")
            elif impl is not None and impl not in ('torch', 'flash'):
                problems.append(f"model.attn_config.attn_impl must be 'torch' or 'flash', got {impl!r}")
            kv = attn.get('kv_n_heads')
            if isinstance(kv, int) and isinstance(h, int) and h > 0 and (kv <= 0 or h % kv):
                problems.append(f'model.attn_config.kv_n_heads ({kv}) must divide model.n_heads ({h})')
        ffn = model.get('ffn_config') or {}
        if isinstance(ffn, dict) and ffn.get('ffn_type') in ('mb_moe', 'mb_dmoe') \
                and importlib.util.find_spec('megablocks') is None:
            problems.append(f"model.ffn_config.ffn_type {ffn['ffn_type']} needs the megablocks package "
                            "(pip install foundry-ext[megablocks]); ffn_type torch_dmoe takes the same moe_* keys "
                            "and runs anywhere")
        if isinstance(ffn, dict) and ffn.get('ffn_type') == 'torch_dmoe':
            _check_keys(ffn, MOE_FFN_KEYS, 'model.ffn_config.', problems)
            e, k = ffn.get('moe_num_experts', 8), ffn.get('moe_top_k', 2)
            if not (isinstance(e, int) and e >= 1):
                problems.append(f'model.ffn_config.moe_num_experts must be an integer >= 1, got {e!r}')
            elif not (isinstance(k, int) and 1 <= k <= e):
                problems.append(f'model.ffn_config.moe_top_k ({k}) must be between 1 and moe_num_experts ({e})')
            cf = ffn.get('moe_capacity_factor')
            if cf is not None and not (isinstance(cf, _NUM) and cf > 0):
                problems.append(f'model.ffn_config.moe_capacity_factor must be > 0 or null (dropless), got {cf!r}')
    elif name == 'hf_causal_lm':
        src = model.get('pretrained_model_name_or_path')
        if not isinstance(src, str):
            problems.append('model.pretrained_model_name_or_path is required for hf_causal_lm '
                            '(a local model/config folder)')
        elif _is_local_path(src) and not Path(src).expanduser().exists():
            problems.append(f'model.pretrained_model_name_or_path: folder {src} does not exist')
        elif not Path(src).expanduser().exists() and _offline():
            problems.append(f'model.pretrained_model_name_or_path {src!r} is not a local folder and the hub '
                            'is off (HF_HUB_OFFLINE=1); point it at a local model folder')


def _offline() -> bool:
    return os.environ.get('HF_HUB_OFFLINE', '0') not in ('0', '', 'false', 'False')


def _check_tokenizer(cfg: dict, problems: list[str]) -> None:
    from foundry_ext.data.tokenizer import tokenizer_vocab_size
    tok = cfg.get('tokenizer')
    if not isinstance(tok, dict):
        return
    name = tok.get('name')
    if not isinstance(name, str):
        problems.append('tokenizer.name is missing; point it at a tokenizer folder '
                        '(build one with `python -m foundry_ext tokenizer`)')
        return
    path = Path(name).expanduser()
    if not path.exists():
        if _is_local_path(name):
            problems.append(f'tokenizer.name: folder {name} does not exist; build it with '
                            f'`python -m foundry_ext tokenizer --corpus <corpus> --out {name}` (or `make data`)')
        elif _offline():
            problems.append(f'tokenizer.name {name!r} is not a local folder and the hub is off '
                            '(HF_HUB_OFFLINE=1); build one with `python -m foundry_ext tokenizer`')
        return
    vocab = tokenizer_vocab_size(path)
    model = cfg.get('model') if isinstance(cfg.get('model'), dict) else {}
    mv = model.get('vocab_size')
    if vocab is not None and isinstance(mv, int) and vocab > mv:
        problems.append(f'tokenizer {name} has {vocab} tokens but model.vocab_size is {mv}; '
                        f'set model.vocab_size >= {vocab} (a multiple of 64 is fastest)')


def _check_loader(loader: Any, where: str, problems: list[str]) -> None:
    if not isinstance(loader, dict):
        problems.append(f'{where} must be a mapping with name and dataset')
        return
    if loader.get('name') == 'mixture':
        from foundry_ext.data.mixture_loader import check_loader
        check_loader(loader, where, problems)
        return
    _check_keys(loader, LOADER_KEYS, f'{where}.', problems)
    nw = loader.get('num_workers')
    if nw is not None and (not isinstance(nw, int) or isinstance(nw, bool) or nw < 0):
        problems.append(f'{where}.num_workers must be an integer >= 0, got {nw!r}')
    ds = loader.get('dataset')
    if not isinstance(ds, dict):
        problems.append(f'{where}.dataset must be a mapping')
        return
    name = loader.get('name')
    if name == 'corpus_text':
        root = ds.get('root')
        if root is None:
            problems.append(f'{where}.dataset.root is missing: the MDS root written by '
                            'data_prep/convert_text_to_mds.py')
        elif not Path(root).is_dir():
            problems.append(f'{where}.dataset.root: data folder {root} does not exist; build it with '
                            '`make data` or data_prep/convert_text_to_mds.py --out ' + str(root))
        else:
            split = ds.get('split', 'train')
            domains = ds.get('domains') or sorted(p.name for p in Path(root).iterdir() if p.is_dir())
            for d in domains:
                if not (Path(root) / d / split / 'index.json').is_file():
                    problems.append(f'{where}.dataset: {root}/{d}/{split}/index.json does not exist; '
                                    f'is {d!r} a converted domain with a {split!r} split?')
    elif name in ('text', 'finetuning'):
        local, remote = ds.get('local'), ds.get('remote')
        if isinstance(local, str) and not remote and not Path(local).exists() and not ds.get('streams'):
            problems.append(f'{where}.dataset.local: data folder {local} does not exist and no remote is set')
        for sname, s in (ds.get('streams') or {}).items():
            if isinstance(s, dict) and isinstance(s.get('local'), str) and not s.get('remote') \
                    and not Path(s['local']).exists():
                problems.append(f"{where}.dataset.streams.{sname}.local: data folder {s['local']} does not exist")


def validate(cfg: dict[str, Any]) -> None:
    """Raise one UserError listing every problem (one line each)."""
    problems: list[str] = []
    _check_keys(cfg, TRAIN_KEYS, '', problems)
    for k in REQUIRED:
        if k not in cfg:
            problems.append(f'required key {k} is missing')
    if 'device_train_batch_size' not in cfg and 'global_train_batch_size' not in cfg:
        problems.append('set global_train_batch_size (or device_train_batch_size)')
    for k in ('max_seq_len', 'global_train_batch_size', 'device_eval_batch_size'):
        _positive_int(cfg, k, '', problems)
    md = cfg.get('max_duration')
    if isinstance(md, str) and not _DURATION.match(md):
        problems.append(f"max_duration {md!r} is not a duration; write e.g. 500ba, 1ep or 10000000tok")
    prec = cfg.get('precision')
    if isinstance(prec, str) and prec not in PRECISIONS:
        problems.append(f'precision {prec!r} is not one of {list(PRECISIONS)}{_did_you_mean(prec, PRECISIONS)}')
    if isinstance(cfg.get('model'), dict):
        _check_model(cfg['model'], problems)
    _check_tokenizer(cfg, problems)
    if 'train_loader' in cfg:
        _check_loader(cfg['train_loader'], 'train_loader', problems)
    if cfg.get('eval_loader') is not None:
        _check_loader(cfg['eval_loader'], 'eval_loader', problems)
    for i, ev in enumerate(cfg.get('eval_loaders') or []):
        _check_loader(ev, f'eval_loaders[{i}]', problems)
        if isinstance(ev, dict) and 'label' not in ev:
            problems.append(f'eval_loaders[{i}].label is missing; each of several eval loaders needs a label')
    _check_callbacks(cfg, problems)
    if problems:
        raise UserError('\n  '.join(['invalid config:'] + problems) if len(problems) > 1
                        else f'invalid config: {problems[0]}')


def _check_callbacks(cfg: dict, problems: list[str]) -> None:
    """Our callbacks' options (MFU monitor, loss-spike guard), before anything is built."""
    cbs = cfg.get('callbacks')
    if not isinstance(cbs, dict):
        return
    guard = cbs.get('loss_spike_guard')
    if isinstance(guard, dict) or guard is None and 'loss_spike_guard' in cbs:
        from foundry_ext.spike import SpikeConfig
        opts = {k: v for k, v in (guard or {}).items() if k not in ('rollback_skip_batches', 'log_window')}
        try:
            sc = SpikeConfig(**opts)
        except TypeError:
            bad = sorted(set(opts) - set(SpikeConfig.__dataclass_fields__))
            problems.append(f'unknown key callbacks.loss_spike_guard.{bad[0]}'
                            f'{_did_you_mean(bad[0], list(SpikeConfig.__dataclass_fields__) + ["rollback_skip_batches"])}')
        except UserError as e:
            problems.append(str(e))
        else:
            if sc.wants_rollback and not cfg.get('save_folder'):
                problems.append("callbacks.loss_spike_guard: action 'rollback' needs a checkpoint folder; set "
                                "save_folder (and save_interval, e.g. 50ba) or drop 'rollback' from actions")
    mfu = cbs.get('mfu_monitor')
    if isinstance(mfu, dict):
        from foundry_ext import hardware
        try:
            if mfu.get('device') is not None:
                hardware.table_peak(str(mfu['device']), 'fp32')
            if mfu.get('peak_flops') is not None:
                hardware.peak_flops(peak=mfu['peak_flops'])
        except UserError as e:
            problems.append(f'callbacks.mfu_monitor: {e}')


# ------------------------------------------------------------------------------ fallbacks


def has_flash_attn() -> bool:
    return importlib.util.find_spec('flash_attn') is not None


def apply_fallbacks(cfg: dict[str, Any], cuda: bool, flash_attn: bool, world_size: int = 1) -> list[str]:
    """Rewrite, in place, what cannot run on this machine into what can. Returns one
    message per change, so the caller can log each once."""
    notes: list[str] = []
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
