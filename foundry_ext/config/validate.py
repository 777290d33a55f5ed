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
from pathlib import Path
from typing import Any, Callable

from foundry_ext.checkpoint.hf import HF_MODELS, model_vocab_size
from foundry_ext.config.ranges import range_problems
from foundry_ext.config.registries import check_mapping_section, check_model_layers, check_name, check_named
from foundry_ext.config.schema import ATTN_KEYS, MPT_KEYS, TRAIN_KEYS
from foundry_ext.data.mds_check import check_stream
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

# (kind, registry name) -> the owner of that section: "module:ConfigClass", parsed with
# validation.parse, optionally followed by "module:function" run on the parsed object (data checks).
OWNERS: dict[tuple[str, str], tuple[str, ...]] = {
    ('callback', 'mfu_monitor'): ('foundry_ext.throughput.config:MFUConfig',),
    ('callback', 'loss_spike_guard'): ('foundry_ext.stability.config:LossSpikeGuardConfig',),
    ('callback', 'inject_spike'): ('foundry_ext.stability.config:InjectSpikeConfig',),
    ('callback', 'mix_logger'): ('foundry_ext.data.mixing.config:MixLoggerConfig',),
    ('callback', 'moe_monitor'): ('foundry_ext.models.config:MoEMonitorConfig',),
    ('callback', 'gauntlet'): ('foundry_ext.gauntlet.config:GauntletCallbackConfig',
                               'foundry_ext.gauntlet.config:check_callback_files'),
    ('callback', 'checkpoint_integrity'): ('foundry_ext.checkpoint.config:CheckpointIntegrityConfig',),
    ('callback', 'preemption'): ('foundry_ext.checkpoint.config:PreemptionConfig',),
    ('callback', 'data_fingerprint'): ('foundry_ext.data.fingerprint:DataFingerprintConfig',),
    ('loader', 'mixture'): ('foundry_ext.data.mixing.config:MixtureConfig',
                            'foundry_ext.data.mixing.config:check_data'),
    ('loader', 'corpus_text'): ('foundry_ext.data.corpus_text:CorpusTextConfig',
                                'foundry_ext.data.corpus_text:check_data'),
    ('ffn', 'torch_dmoe'): ('foundry_ext.models.config:MoEConfig',),
    ('callback', 'model_check'): ('foundry_ext.checkpoint.fit:ModelCheckConfig',),
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
    """The source folder (config, weights, custom code; hub names offline) and ``peft_config``'s keys."""
    from foundry_ext.checkpoint.hf import folder_problems
    problems += folder_problems(model)
    if isinstance(model.get('peft_config'), dict):
        from foundry_ext.finetune.lora import LoraOptions
        collect(problems, parse, LoraOptions, model['peft_config'], 'model.peft_config')


MODEL_CHECKS: dict[str, Callable[[dict, list[str]], None]] = {
    'mpt_causal_lm': _check_mpt, FOUNDRY_MPT: _check_mpt, 'hf_causal_lm': _check_hf,
    'foundry_hf_causal_lm': _check_hf}


def _check_model(model: dict, problems: list[str]) -> None:
    name = model.get('name')
    if name is None:
        problems.append('model.name is missing; e.g. mpt_causal_lm or hf_causal_lm')
        return
    if not check_name('models', name, 'model.name', problems):
        return
    if name in ('mpt_causal_lm', FOUNDRY_MPT):
        check_model_layers(model, problems)
    check = MODEL_CHECKS.get(name)
    if check is not None:
        check(model, problems)


def _check_tokenizer(cfg: dict, problems: list[str]) -> None:
    from foundry_ext.prep.tokenizer import tokenizer_folder_problem, tokenizer_vocab_size
    tok = cfg.get('tokenizer')
    if not isinstance(tok, dict):
        return
    problems += check_table(tok, {'name': (str,), 'kwargs': (dict,)}, 'tokenizer')
    name = tok.get('name')
    model_cfg = cfg.get('model')
    model_src = model_cfg.get('pretrained_model_name_or_path') if isinstance(model_cfg, dict) else None
    if isinstance(name, str) and name == model_src and not Path(name).expanduser().exists():
        return  # the model folder's own tokenizer: its absence is reported once, under model
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
    bad = tokenizer_folder_problem(path)
    if bad:
        problems.append(f'tokenizer.name: {bad}')
        return
    vocab = tokenizer_vocab_size(path)
    model: dict[str, Any] = cfg['model'] if isinstance(cfg.get('model'), dict) else {}
    mv = model_vocab_size(model)
    if vocab is not None and isinstance(mv, int) and vocab > mv:
        if model.get('name') in HF_MODELS:
            fix = (f'set model.config_overrides.vocab_size: {vocab} (or more)' if model.get('pretrained') is False
                   else "use the model's own tokenizer, or set model.allow_embedding_resizing: true to add rows "
                        '(randomly initialised)')
            if not model.get('allow_embedding_resizing'):
                problems.append(f"tokenizer {name} has {vocab} tokens but the model's embedding "
                                f"({model.get('pretrained_model_name_or_path')}) has {mv} rows; {fix}")
        else:
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
    elif not ds.get('streams') and not ds.get('hf_name') and (isinstance(local, str) or isinstance(remote, str)):
        collect(problems, check_stream, local, remote, ds.get('split'), f'{where}.dataset')   # MDS whole?
    for sname, s in (ds.get('streams') or {}).items():
        if isinstance(s, dict) and isinstance(s.get('local'), str) and not s.get('remote') \
                and not Path(s['local']).exists():
            problems.append(f"{where}.dataset.streams.{sname}.local: data folder {s['local']} does not exist")
        elif isinstance(s, dict) and (isinstance(s.get('local'), str) or isinstance(s.get('remote'), str)):
            collect(problems, check_stream, s.get('local'), s.get('remote'), s.get('split', ds.get('split')),
                    f'{where}.dataset.streams.{sname}')


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
    else:
        check_name('dataloaders', loader.get('name'), f'{where}.name', problems)


def _check_callbacks(cfg: dict, problems: list[str]) -> None:
    cbs = cfg.get('callbacks')
    if not isinstance(cbs, dict):
        return
    ours = frozenset(n for kind, n in OWNERS if kind == 'callback')
    check_mapping_section(cfg, 'callbacks', 'callbacks', problems, owned=ours)
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
    _positive_int(cfg, 'max_seq_len', '', problems)
    problems += range_problems(cfg)
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
    for key, registry in (('loggers', 'loggers'), ('algorithms', 'algorithms')):
        check_mapping_section(cfg, key, registry, problems)
    check_named(cfg.get('optimizer'), 'optimizers', 'optimizer', problems, options=True)
    check_named(cfg.get('scheduler'), 'schedulers', 'scheduler', problems, options=True)
    lp = cfg.get('load_path')
    if isinstance(lp, str) and '://' not in lp and not Path(lp).expanduser().exists():
        problems.append(f'load_path: checkpoint {lp} does not exist; train that run first or point at its '
                        'checkpoints/latest-rank0.pt (a .pt file or a sharded ep*-ba* folder)')
    from foundry_ext.finetune.config import packing_problems
    problems += packing_problems(cfg)
    return problems


def validate(cfg: dict[str, Any]) -> None:
    """Raise one :class:`ConfigError` listing every problem (one line each)."""
    problems = problems_of(cfg)
    if problems:
        raise ConfigError([f'invalid config: {problems[0]}'] if len(problems) == 1 else problems)


__all__ = ['OWNERS', 'MODEL_CHECKS', 'check_owned', 'problems_of', 'validate', 'UserError']
