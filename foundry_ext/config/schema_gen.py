"""Generate ``foundry_ext/config/schema.py`` from LLM Foundry's own dataclasses (``make schema``).

The key tables of the sections LLM Foundry owns (the top level = ``TrainConfig``, an MPT model =
``MPTConfig.__init__`` + ``ComposerMPTCausalLM.__init__``, ``attn_config`` = its defaults) are read
from the installed llm-foundry, so validation before the heavy imports knows exactly the keys and
types the pinned version accepts. ``tests/unit/config/test_schema.py`` regenerates the text and
fails when the committed file has drifted.

    python -m foundry_ext.config.schema_gen            # rewrite schema.py
    python -m foundry_ext.config.schema_gen --check    # exit 1 if it is stale
"""
from __future__ import annotations

import dataclasses
import inspect
import sys
import typing
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name('schema.py')
# Accepted by our model / by PretrainedConfig besides MPTConfig's own parameters.
MPT_EXTRA = {'name': (str,), 'pretrained': (bool,), 'torch_dtype': (str,), 'bos_token_id': (int,),
             'eos_token_id': (int,), 'pad_token_id': (int,), 'additional_eval_metrics': (list,)}
# LLM Foundry turns a string icl_tasks / eval_gauntlet (a yaml path) into the *_str key itself.
TRAIN_EXTRA = {'icl_tasks': 'str', 'eval_gauntlet': 'str'}
# attn_config keys of kv_n_heads (GQA) and our foundry_attention class (foundry_ext.models.mpt).
ATTN_EXTRA = ('kv_n_heads', 'attn_backend')
_SIMPLE = {int: 'int', float: 'float', str: 'str', bool: 'bool', dict: 'dict', list: 'list'}
# LLM Foundry's registries whose names a yaml writes (the entry-point group is llmfoundry_<registry>);
# several registries of LLM Foundry fold into one name space where the yaml cannot tell them apart.
REGISTRIES = {'callbacks': ('callbacks', 'callbacks_with_config'), 'loggers': ('loggers',),
              'algorithms': ('algorithms',), 'optimizers': ('optimizers',), 'schedulers': ('schedulers',),
              'models': ('models',), 'dataloaders': ('dataloaders',), 'norms': ('norms',), 'fcs': ('fcs',),
              'ffns': ('ffns', 'ffns_with_norm', 'ffns_with_megablocks'), 'attention_classes': ('attention_classes',),
              'param_init_fns': ('param_init_fns',)}
# Names LLM Foundry registers only when an optional package (transformer-engine, megablocks) imports.
CONDITIONAL = {'fcs': ('te',), 'ffns': ('te_ln_mlp', 'mb_moe', 'mb_dmoe')}
# Registries whose options are the constructor's keyword arguments (checked before the build);
# the arguments LLM Foundry fills in itself are left out.
OPTIONS_OF = ('callbacks', 'loggers', 'algorithms', 'optimizers', 'schedulers')
INJECTED = {'params', 'train_config', 'self'}


def _types(tp: Any) -> tuple[str, ...]:
    """An annotation -> the plain yaml types it admits, as names (None is always accepted)."""
    if isinstance(tp, str):
        tp = eval(tp, {**vars(typing), 'PreTrainedTokenizerBase': object})  # noqa: S307 (their annotations)
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        out: list[str] = []
        for a in typing.get_args(tp):
            if a is not type(None):
                out += [t for t in _types(a) if t not in out]
        return tuple(out)
    if origin is not None:
        tp = origin
    if tp in (typing.Any, object):
        return ('object',)
    if tp in _SIMPLE:
        return (_SIMPLE[tp],)
    if isinstance(tp, type) and issubclass(tp, dict):
        return ('dict',)
    if isinstance(tp, type) and issubclass(tp, (list, tuple)):
        return ('list',)
    return ('object',)


def tables() -> dict[str, dict[str, tuple[str, ...]]]:
    from llmfoundry.models.mpt.configuration_mpt import MPTConfig
    from llmfoundry.models.mpt.modeling_mpt import ComposerMPTCausalLM
    from llmfoundry.models.utils.config_defaults import attn_config_defaults
    from llmfoundry.utils.config_utils import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    train = {f.name: _types(hints[f.name]) for f in dataclasses.fields(TrainConfig)}
    for k, t in TRAIN_EXTRA.items():
        train[k] = (*train[k], t)
    mpt: dict[str, tuple[str, ...]] = {}
    for fn in (MPTConfig.__init__, ComposerMPTCausalLM.__init__):
        for name, p in inspect.signature(fn).parameters.items():
            if name in ('self', 'kwargs', 'tokenizer') or p.kind is p.VAR_KEYWORD:
                continue
            mpt[name] = _types(p.annotation) if p.annotation is not p.empty else ('object',)
    for k, v in MPT_EXTRA.items():
        mpt.setdefault(k, tuple(_SIMPLE[t] for t in v))
    attn: dict[str, tuple[str, ...]] = {k: ('object',) for k in [*attn_config_defaults, *ATTN_EXTRA]}
    return {'TRAIN_KEYS': train, 'MPT_KEYS': mpt, 'ATTN_KEYS': attn}


def _annotation_types(fn: Any, name: str, p: inspect.Parameter) -> tuple[str, ...]:
    if p.annotation is p.empty:
        return ('object',)
    try:
        return _types(typing.get_type_hints(fn).get(name, p.annotation))
    except Exception:  # noqa: BLE001 - an annotation naming what this module cannot import
        try:
            return _types(p.annotation)
        except Exception:  # noqa: BLE001
            return ('object',)


def options_of(obj: Any) -> tuple[dict[str, tuple[str, ...]] | None, tuple[str, ...]]:
    """A registered class or factory -> ({option: yaml types}, required options), or (None, ())
    when it takes ``**kwargs`` (its options cannot be checked before it is built)."""
    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None, ()
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None, ()
    opts: dict[str, tuple[str, ...]] = {}
    required = []
    for name, p in params.items():
        if name in INJECTED or p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            continue
        opts[name] = _annotation_types(fn, name, p)
        if p.default is p.empty:
            required.append(name)
    return opts, tuple(required)


def registry_tables() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, tuple[str, ...]]]]:
    """LLM Foundry's built-in registry entries (not the entry points of installed plug-ins):
    ``({registry: {name: {option: types} or None}}, {registry: {name: required options}})``."""
    import catalogue
    from llmfoundry import layers_registry, registry

    names: dict[str, dict[str, Any]] = {}
    required: dict[str, dict[str, tuple[str, ...]]] = {}
    for key, parts in REGISTRIES.items():
        table: dict[str, Any] = {}
        for part in parts:
            reg = getattr(registry, part, None) or getattr(layers_registry, part)
            for full, obj in sorted(catalogue._get_all(reg.namespace).items()):
                if str(getattr(obj, '__module__', '')).startswith('foundry_ext'):
                    continue   # ours, registered through an entry point
                opts, req = options_of(obj) if key in OPTIONS_OF else (None, ())
                table[full[-1]] = opts
                if req:
                    required.setdefault(key, {})[full[-1]] = req
        for name in CONDITIONAL.get(key, ()):
            table.setdefault(name, None)
        names[key] = dict(sorted(table.items()))
    return names, required


def _render_registries() -> list[str]:
    names, required = registry_tables()
    lines = ['# LLM Foundry\'s built-in registry names (entry points are read at validation time):',
             '# {registry: {name: {option: yaml types} | None (takes **kwargs: options unchecked)}}',
             'REGISTRY_NAMES: dict[str, dict[str, dict[str, tuple[type, ...]] | None]] = {']
    for reg, table in names.items():
        lines.append(f'    {reg!r}: {{')
        for name, opts in table.items():
            if opts is None:
                lines.append(f'        {name!r}: None,')
                continue
            lines.append(f'        {name!r}: {{')
            for k, ts in opts.items():
                lines.append(f"            {k!r}: ({', '.join(ts)},),")
            lines.append('        },')
        lines.append('    },')
    lines += ['}', '', '# options a built-in component cannot be built without',
              'REQUIRED_OPTIONS: dict[str, dict[str, tuple[str, ...]]] = {']
    for reg, table in required.items():
        lines.append(f'    {reg!r}: {{')
        for name, req in table.items():
            lines.append(f"        {name!r}: ({''.join(repr(r) + ', ' for r in req).rstrip()}),")
        lines.append('    },')
    lines += ['}', '']
    return lines


def render() -> str:
    import llmfoundry
    lines = ['"""GENERATED by `make schema` (python -m foundry_ext.config.schema_gen) from llm-foundry '
             f'{llmfoundry.__version__}: do not edit.',
             '',
             "Keys LLM Foundry's sections accept and the yaml types each admits (null is always accepted).",
             '"""', '']
    for name, table in tables().items():
        lines.append(f'{name}: dict[str, tuple[type, ...]] = {{')
        for k, ts in table.items():
            lines.append(f"    {k!r}: ({', '.join(ts)},),")
        lines.append('}')
        lines.append('')
    lines += _render_registries()
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if '--check' in argv:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f'{OUT} is stale; run `make schema` and commit it', file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f'wrote {OUT}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
