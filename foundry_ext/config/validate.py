"""Validate a whole training config before torch, Composer or LLM Foundry are imported.

Each section goes to its owner through one table (:data:`OWNERS`): our components' sections are
parsed by :func:`foundry_ext.validation.parse` into the component's own config dataclass (the same
parse the component runs when it is built); LLM Foundry's own sections are checked against key
tables generated from its dataclasses (``config/schema.py``, ``make schema``). This module keeps
only what spans sections: required keys, batch sizes, durations, the tokenizer against the model's
vocabulary, the spike guard's rollback against ``save_folder``. Every problem is one line; all of
them are raised together as one :class:`~foundry_ext.validation.ConfigError`.
"""
from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any, Callable

from foundry_ext.config.schema import ATTN_KEYS, MPT_KEYS, TRAIN_KEYS
from foundry_ext.errors import UserError
from foundry_ext.models.config import ATTN_IMPLS, FOUNDRY_MPT
from foundry_ext.validation import (
    ConfigError,
    check_table,
    choice_error,
    collect,
    did_you_mean,
    in_section,
    join,
    parse,
)

REQUIRED = ('model', 'tokenizer', 'optimizer', 'scheduler', 'train_loader', 'max_duration', 'max_seq_len')
PRECISIONS = ('fp32', 'amp_fp16', 'amp_bf16', 'amp_fp8')
# Loader keys LLM Foundry's own `text` / `finetuning` loaders take besides `dataset`.
LOADER_KEYS: dict[str, tuple] = {k: (object,) for k in (
    'name', 'label', 'dataset', 'drop_last', 'num_workers', 'pin_memory', 'prefetch_factor',
    'persistent_workers', 'timeout')}
_DURATION = re.compile(r'^\s*\d+(\.\d+)?\s*(ba|ep|tok|sp|dur)\s*$')

# (kind, registry name) -> the owner of that section: "module:ConfigClass", parsed with
# validation.parse, optionally followed by "module:function" run on the parsed object (data checks).
OWNERS: dict[tuple[str, str], tuple[str, ...]] = {
    ('callback', 'mfu_monitor'): ('foundry_ext.throughput.config:MFUConfig',),
    ('callback', 'loss_spike_guard'): ('foundry_ext.stability.config:LossSpikeGuardConfig',),
    ('callback', 'inject_spike'): ('foundry_ext.stability.config:InjectSpikeConfig',),
    ('callback', 'mix_logger'): ('foundry_ext.data.mixing.config:MixLoggerConfig',),
    ('callback', 'moe_monitor'): ('foundry_ext.models.config:MoEMonitorConfig',),
    ('loader', 'mixture'): ('foundry_ext.data.mixing.config:MixtureConfig',
                            'foundry_ext.data.mixing.config:check_data'),
    ('loader', 'corpus_text'): ('foundry_ext.data.corpus_text:CorpusTextConfig',
                                'foundry_ext.data.corpus_text:check_data'),
    ('ffn', 'torch_dmoe'): ('foundry_ext.models.config:MoEConfig',),
    ('callback', 'sft_monitor'): ('foundry_ext.finetune.config:SFTMonitorConfig',),
    ('loader', 'sft'): ('foundry_ext.finetune.config:SFTLoaderConfig', 'foundry_ext.finetune.config:check_data'),
}


def _resolve(ref: str) -> Any:
    mod, _, name = ref.partition(':')
    return getattr(importlib.import_module(mod), name)


def check_owned(kind: str, name: str, section: Any, where: str, problems: list[str]) -> Any:
    """Parse ``section`` with its owner's config class (and run its data checks); the parsed
    object, or None when there is no owner or it has problems (added to ``problems``)."""
    refs = OWNERS.get((kind, name))
    if refs is None:
        return None
    cls = _resolve(refs[0])
    obj = collect(problems, parse, cls, section or {}, where, ignore=('name',) if kind == 'loader' else ())
    if obj is not None:
        with in_section(where):
            for ref in refs[1:]:
                collect(problems, _resolve(ref), obj)
    return obj


# ------------------------------------------------------------------------------ sections


def _positive_int(section: dict, key: str, where: str, problems: list[str]) -> None:
    v = section.get(key)
    if isinstance(v, int) and not isinstance(v, bool) and v <= 0:
        problems.append(f'{join(where, key)} must be > 0, got {v}')


def is_local_path(name: str) -> bool:
    return name.startswith(('/', './', '../', '~')) or Path(name).exists() or Path(name.split('/')[0]).is_dir()


def offline() -> bool:
    return os.environ.get('HF_HUB_OFFLINE', '0') not in ('0', '', 'false', 'False')


def _check_mpt(model: dict, problems: list[str]) -> None:
    name = model['name']
    problems += check_table(model, MPT_KEYS, 'model')
    for k in ('d_model', 'n_heads', 'n_layers', 'max_seq_len', 'vocab_size'):
        _positive_int(model, k, 'model', problems)
    d, h = model.get('d_model'), model.get('n_heads')
    if isinstance(d, int) and isinstance(h, int) and h > 0 and d % h:
        problems.append(f'model.d_model ({d}) must be divisible by model.n_heads ({h})')
    attn = model.get('attn_config') or {}
    if isinstance(attn, dict):
        problems += check_table(attn, ATTN_KEYS, 'model.attn_config')
        impl = attn.get('attn_impl')
        if name == FOUNDRY_MPT:
            if impl is not None and impl not in ATTN_IMPLS:
                problems.append(choice_error(impl, ATTN_IMPLS, 'model.attn_config.attn_impl'))
        elif impl in ('auto', 'sdpa'):
            problems.append(f"model.attn_config.attn_impl {impl!r} needs model.name: {FOUNDRY_MPT} "
                            "(mpt_causal_lm accepts only 'torch' or 'flash')")
        elif impl is not None and impl not in ('torch', 'flash'):
            problems.append(f"model.attn_config.attn_impl must be 'torch' or 'flash', got {impl!r}")
        kv = attn.get('kv_n_heads')
        if isinstance(kv, int) and isinstance(h, int) and h > 0 and (kv <= 0 or h % kv):
            problems.append(f'model.attn_config.kv_n_heads ({kv}) must divide model.n_heads ({h})')
    ffn = model.get('ffn_config') or {}
    if isinstance(ffn, dict):
        ftype = str(ffn.get('ffn_type', 'mptmlp'))
        if ftype in ('mb_moe', 'mb_dmoe') and importlib.util.find_spec('megablocks') is None:
            problems.append(f'model.ffn_config.ffn_type {ftype} needs the megablocks package '
                            '(pip install foundry-ext[megablocks]); ffn_type torch_dmoe takes the same moe_* keys '
                            'and runs anywhere')
        check_owned('ffn', ftype, ffn, 'model.ffn_config', problems)


def _check_hf(model: dict, problems: list[str]) -> None:
    src = model.get('pretrained_model_name_or_path')
    if not isinstance(src, str):
        problems.append('model.pretrained_model_name_or_path is required for hf_causal_lm '
                        '(a local model/config folder)')
    elif is_local_path(src) and not Path(src).expanduser().exists():
        problems.append(f'model.pretrained_model_name_or_path: folder {src} does not exist')
    elif not Path(src).expanduser().exists() and offline():
        problems.append(f'model.pretrained_model_name_or_path {src!r} is not a local folder and the hub '
                        'is off (HF_HUB_OFFLINE=1); point it at a local model folder')


MODEL_CHECKS: dict[str, Callable[[dict, list[str]], None]] = {
    'mpt_causal_lm': _check_mpt, FOUNDRY_MPT: _check_mpt, 'hf_causal_lm': _check_hf,
    'foundry_hf_causal_lm': _check_hf}


def _check_model(model: dict, problems: list[str]) -> None:
    name = model.get('name')
    if name is None:
        problems.append('model.name is missing; e.g. mpt_causal_lm or hf_causal_lm')
        return
    check = MODEL_CHECKS.get(name)
    if check is not None:
        check(model, problems)


def _check_tokenizer(cfg: dict, problems: list[str]) -> None:
    from foundry_ext.prep.tokenizer import tokenizer_vocab_size
    tok = cfg.get('tokenizer')
    if not isinstance(tok, dict):
        return
    name = tok.get('name')
    if not isinstance(name, str):
        problems.append('tokenizer.name is missing; point it at a tokenizer folder '
                        '(build one with `foundry-ext tokenizer`)')
        return
    path = Path(name).expanduser()
    if not path.exists():
        if is_local_path(name):
            problems.append(f'tokenizer.name: folder {name} does not exist; build it with '
                            f'`foundry-ext tokenizer --corpus <corpus> --out {name}` (or `make data`)')
        elif offline():
            problems.append(f'tokenizer.name {name!r} is not a local folder and the hub is off '
                            '(HF_HUB_OFFLINE=1); build one with `foundry-ext tokenizer`')
        return
    vocab = tokenizer_vocab_size(path)
    model = cfg.get('model') if isinstance(cfg.get('model'), dict) else {}
    mv = model.get('vocab_size')
    if vocab is not None and isinstance(mv, int) and vocab > mv:
        problems.append(f'tokenizer {name} has {vocab} tokens but model.vocab_size is {mv}; '
                        f'set model.vocab_size >= {vocab} (a multiple of 64 is fastest)')


def _check_foundry_loader(loader: dict, where: str, problems: list[str]) -> None:
    """LLM Foundry's own loaders: keys, worker count, local folders that must exist."""
    problems += check_table(loader, LOADER_KEYS, where)
    nw = loader.get('num_workers')
    if nw is not None and (not isinstance(nw, int) or isinstance(nw, bool) or nw < 0):
        problems.append(f'{where}.num_workers must be an integer >= 0, got {nw!r}')
    ds = loader.get('dataset')
    if not isinstance(ds, dict):
        problems.append(f'{where}.dataset must be a mapping')
        return
    local, remote = ds.get('local'), ds.get('remote')
    if isinstance(local, str) and not remote and not Path(local).exists() and not ds.get('streams'):
        problems.append(f'{where}.dataset.local: data folder {local} does not exist and no remote is set')
    for sname, s in (ds.get('streams') or {}).items():
        if isinstance(s, dict) and isinstance(s.get('local'), str) and not s.get('remote') \
                and not Path(s['local']).exists():
            problems.append(f"{where}.dataset.streams.{sname}.local: data folder {s['local']} does not exist")


def _check_loader(loader: Any, where: str, problems: list[str]) -> None:
    if not isinstance(loader, dict):
        problems.append(f'{where} must be a mapping with name and dataset')
        return
    name = str(loader.get('name'))
    if ('loader', name) in OWNERS:
        check_owned('loader', name, loader, where, problems)
    elif name in ('text', 'finetuning'):
        _check_foundry_loader(loader, where, problems)
        if name == 'finetuning':
            from foundry_ext.finetune.config import check_finetuning_rows
            with in_section(where):
                collect(problems, check_finetuning_rows, loader)


def _check_callbacks(cfg: dict, problems: list[str]) -> None:
    cbs = cfg.get('callbacks')
    if not isinstance(cbs, dict):
        return
    for name, opts in cbs.items():
        parsed = check_owned('callback', str(name), opts, f'callbacks.{name}', problems)
        if name == 'loss_spike_guard' and parsed is not None and parsed.wants_rollback and not cfg.get('save_folder'):
            problems.append("callbacks.loss_spike_guard: action 'rollback' needs a checkpoint folder; set "
                            "save_folder (and save_interval, e.g. 50ba) or drop 'rollback' from actions")


# ------------------------------------------------------------------------------ the whole config


def problems_of(cfg: dict[str, Any]) -> list[str]:
    """Every problem of a training config, one line each (empty when it is valid)."""
    problems = check_table(cfg, TRAIN_KEYS, '')
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
        problems.append(f'precision {prec!r} is not one of {list(PRECISIONS)}{did_you_mean(prec, PRECISIONS)}')
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
    from foundry_ext.finetune.config import packing_problems
    problems += packing_problems(cfg)
    return problems


def validate(cfg: dict[str, Any]) -> None:
    """Raise one :class:`ConfigError` listing every problem (one line each)."""
    problems = problems_of(cfg)
    if problems:
        raise ConfigError([f'invalid config: {problems[0]}'] if len(problems) == 1 else problems)


__all__ = ['OWNERS', 'MODEL_CHECKS', 'check_owned', 'problems_of', 'validate', 'UserError']
