"""Security defaults of a training config: no remote code unless the user asks for it.

LLM Foundry's ``hf_causal_lm`` defaults to ``trust_remote_code: true``, which runs any Python a
model folder (or hub repo) ships. Here it is off unless the yaml sets it; when the model or
tokenizer folder does contain custom code (``*.py`` files, ``auto_map`` in ``config.json`` /
``tokenizer_config.json``) one line says so and whether it runs. A model that cannot load without
its custom code (its ``model_type`` is not one transformers knows) is one line before the build.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from foundry_ext.errors import UserError


def custom_code(folder: Any) -> list[str]:
    """What in a local HF folder would run as code with trust_remote_code (sorted names)."""
    if not isinstance(folder, str) or not Path(folder).expanduser().is_dir():
        return []
    p = Path(folder).expanduser()
    found = sorted(q.name for q in p.glob('*.py'))
    for meta in ('config.json', 'tokenizer_config.json'):
        try:
            obj = json.loads((p / meta).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(obj, dict) and obj.get('auto_map'):
            found.append(f'auto_map in {meta}')
    return found


def _model_type(folder: str) -> Optional[str]:
    try:
        obj = json.loads((Path(folder).expanduser() / 'config.json').read_text())
    except (OSError, ValueError):
        return None
    return obj.get('model_type') if isinstance(obj, dict) else None


def _known_to_transformers(model_type: str) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    return model_type in CONFIG_MAPPING_NAMES


def apply_security_defaults(cfg: dict[str, Any]) -> list[str]:
    """Rewrite ``cfg`` in place (trust_remote_code off by default); one note per thing to know."""
    notes: list[str] = []
    model = cfg.get('model') if isinstance(cfg.get('model'), dict) else None
    if model is not None and model.get('name') == 'hf_causal_lm':
        trusted = model.get('trust_remote_code')
        if trusted is None:
            model['trust_remote_code'] = trusted = False
        src = model.get('pretrained_model_name_or_path')
        code = custom_code(src)
        if code and trusted:
            notes.append(f"model folder {src} contains custom code ({', '.join(code)}); it runs because "
                         'model.trust_remote_code is true')
        elif code:
            mt = _model_type(src)
            if mt and not _known_to_transformers(mt):
                raise UserError(f'model folder {src} needs its own code to load (model_type {mt!r} is not one '
                                f"transformers knows; it ships {', '.join(code)}); set model.trust_remote_code: "
                                'true if you trust that code')
            notes.append(f"model folder {src} contains custom code ({', '.join(code)}); it is not run "
                         '(model.trust_remote_code is false unless you set it)')
    tok = cfg.get('tokenizer') if isinstance(cfg.get('tokenizer'), dict) else None
    if tok is not None:
        kwargs = tok.get('kwargs') if isinstance(tok.get('kwargs'), dict) else {}
        code = custom_code(tok.get('name'))
        if code and src_differs(tok.get('name'), model):
            runs = 'it runs because tokenizer.kwargs.trust_remote_code is true' if kwargs.get('trust_remote_code') \
                else 'it is not run (tokenizer.kwargs.trust_remote_code is false unless you set it)'
            notes.append(f"tokenizer folder {tok.get('name')} contains custom code ({', '.join(code)}); {runs}")
    return notes


def src_differs(tok_folder: Any, model: Optional[dict]) -> bool:
    """Say it once when the tokenizer lives in the model folder."""
    src = model.get('pretrained_model_name_or_path') if model else None
    return not (isinstance(src, str) and isinstance(tok_folder, str)
                and Path(src).expanduser().resolve() == Path(tok_folder).expanduser().resolve())
