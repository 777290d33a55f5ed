"""Hugging Face model folders, in and out, read without importing torch or transformers.

* :func:`folder_problems` -- what stops ``hf_causal_lm`` from loading ``pretrained_model_name_or_path``
  (no config.json, no weights with ``pretrained: true``, a hub name while offline, custom code that
  is needed but not trusted), one line each;
* :func:`model_vocab_size` -- the embedding rows the model will have (config.json + overrides);
* :func:`apply_hf_defaults` -- ``trust_remote_code`` false unless the user sets it (LLM Foundry's
  ``hf_causal_lm`` defaults it to true), with a note when a folder ships code;
* :func:`write_tokenizer_files` -- the tokenizer files Composer embeds in a checkpoint, back on disk.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

__all__ = ['WEIGHT_GLOBS', 'HF_MODELS', 'read_config', 'has_weights', 'custom_code', 'folder_problems',
           'model_vocab_size', 'apply_hf_defaults', 'write_tokenizer_files', 'is_offline']

HF_MODELS = ('hf_causal_lm',)
WEIGHT_GLOBS = ('*.safetensors', 'pytorch_model*.bin', '*.safetensors.index.json', 'pytorch_model.bin.index.json',
                'tf_model.h5', 'flax_model.msgpack', 'model.ckpt.index')
# LLM Foundry's MPT folders carry model_type "mpt" + auto_map; transformers' own MptForCausalLM
# (ALiBi-only, a different layout) would take them without trust_remote_code.
FOUNDRY_MPT_TYPE = 'mpt'


def is_offline() -> bool:
    return os.environ.get('HF_HUB_OFFLINE', '0') not in ('0', '', 'false', 'False')


def read_config(folder: str | os.PathLike) -> Optional[dict[str, Any]]:
    """config.json of a folder as a dict (None if absent); ValueError if it is not valid JSON."""
    f = Path(folder) / 'config.json'
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise ValueError(f'{f} is not valid JSON ({e})') from None
    if not isinstance(data, dict):
        raise ValueError(f'{f} must hold a JSON object')
    return data


def has_weights(folder: str | os.PathLike) -> bool:
    p = Path(folder)
    return any(next(p.glob(g), None) is not None for g in WEIGHT_GLOBS)


def custom_code(folder: str | os.PathLike, config: Optional[Mapping[str, Any]]) -> list[str]:
    """Files of model code a folder ships (``*.py`` and the config's ``auto_map`` targets)."""
    files = sorted(p.name for p in Path(folder).glob('*.py'))
    auto = (config or {}).get('auto_map') or {}
    if auto and not files:
        files = sorted({str(v).split('.')[0] + '.py' for v in auto.values() if isinstance(v, str)})
    return files


def _known_model_type(model_type: str) -> Optional[bool]:
    """Does this transformers know ``model_type``? (None: cannot tell cheaply)."""
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except Exception:  # pragma: no cover - transformers missing or reorganised
        return None
    return model_type in CONFIG_MAPPING_NAMES


def folder_problems(model: Mapping[str, Any], where: str = 'model') -> list[str]:
    """One line per problem with the ``hf_causal_lm`` section ``model``'s source folder."""
    src = model.get('pretrained_model_name_or_path')
    key = f'{where}.pretrained_model_name_or_path'
    if not isinstance(src, str) or not src:
        return [f'{key} is required for {model.get("name")}: a local HF model folder (config.json + weights), '
                'or a config-only folder with pretrained: false']
    path = Path(src).expanduser()
    if not path.exists():
        local = src.startswith(('/', './', '../', '~')) or src.count('/') > 1 or Path(src.split('/')[0]).is_dir()
        if local:
            return [f'{key}: folder {src} does not exist']
        if is_offline():
            return [f'{key} {src!r} is not a local folder and the hub is off (HF_HUB_OFFLINE=1); download the '
                    'model on a machine with network (huggingface-cli download ... --local-dir <dir>) and point at '
                    'that folder']
        return []
    if not path.is_dir():
        return [f'{key}: {src} is a file; point it at the model folder that holds config.json']
    try:
        cfg = read_config(path)
    except ValueError as e:
        return [f'{key}: {e}']
    if cfg is None:
        hint = ' (it looks like a Composer checkpoint folder: export it with `foundry-ext export`)' \
            if (path / '.metadata').is_file() or next(path.glob('*.pt'), None) else ''
        return [f'{key}: {src} has no config.json; point it at an HF model folder{hint}']
    problems = []
    pretrained = model.get('pretrained', True)
    if pretrained and not has_weights(path):
        problems.append(f'{key}: {src} has config.json but no weights (*.safetensors or pytorch_model.bin); set '
                        f'{where}.pretrained: false to start from random weights, or point at a folder with weights')
    trust = model.get('trust_remote_code')
    mtype = str(cfg.get('model_type', ''))
    if trust is not True and cfg.get('auto_map') and (mtype == FOUNDRY_MPT_TYPE or _known_model_type(mtype) is False):
        what = "LLM Foundry's MPT code (transformers' own MPT class reads a different layout)" \
            if mtype == FOUNDRY_MPT_TYPE else f"its own code for model_type {mtype!r}"
        problems.append(f'{key}: {src} needs {what}; set {where}.trust_remote_code: true if you trust '
                        f"{', '.join(custom_code(path, cfg)) or 'that code'}")
    return problems


def model_vocab_size(model: Mapping[str, Any]) -> Optional[int]:
    """Rows of the model's token embedding: ``vocab_size`` (MPT yaml) or the HF folder's config.json
    (``config_overrides.vocab_size`` wins); None when unknown (hub names, unreadable folders)."""
    if model.get('name') not in HF_MODELS:
        v = model.get('vocab_size')
        return v if isinstance(v, int) and not isinstance(v, bool) else None
    over = model.get('config_overrides') or {}
    if isinstance(over, Mapping) and isinstance(over.get('vocab_size'), int):
        return int(over['vocab_size'])
    src = model.get('pretrained_model_name_or_path')
    if not isinstance(src, str) or not Path(src).expanduser().is_dir():
        return None
    try:
        cfg = read_config(Path(src).expanduser()) or {}
    except ValueError:
        return None
    text: dict[str, Any] = cfg['text_config'] if isinstance(cfg.get('text_config'), dict) else cfg
    v = text.get('vocab_size')
    return v if isinstance(v, int) else None


def apply_hf_defaults(model: dict[str, Any]) -> list[str]:
    """``hf_causal_lm``: ``trust_remote_code`` false unless set (a note when the folder ships code)."""
    if model.get('name') not in HF_MODELS or 'trust_remote_code' in model:
        return []
    model['trust_remote_code'] = False
    src = model.get('pretrained_model_name_or_path')
    if isinstance(src, str) and Path(src).expanduser().is_dir():
        try:
            cfg = read_config(Path(src).expanduser())
        except ValueError:
            cfg = None
        files = custom_code(Path(src).expanduser(), cfg)
        if files:
            return [f"{src} ships model code ({', '.join(files)}); it is not run (trust_remote_code: false, "
                    'unlike LLM Foundry\'s default); set model.trust_remote_code: true to use it']
    return []


def write_tokenizer_files(files: Mapping[str, Any], dest: str | os.PathLike) -> list[str]:
    """Composer's ``integrations.huggingface.tokenizer`` mapping -> files in ``dest`` (names written).

    The same file kinds Composer stores: json (parsed), txt (a list of lines), py / jinja (text) and
    sentencepiece ``.model`` (the serialized proto, written as bytes)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, item in files.items():
        ext = item.get('file_extension', Path(name).suffix) if isinstance(item, Mapping) else Path(name).suffix
        content = item.get('content') if isinstance(item, Mapping) else item
        fname = name if name.endswith(ext) else name + ext
        path = dest / fname
        if ext == '.json':
            path.write_text(json.dumps(content, ensure_ascii=False, indent=2), encoding='utf-8')
        elif ext == '.txt':
            lines = content if isinstance(content, list) else str(content).split('\n')
            path.write_text(''.join(f'{line}\n' for line in lines), encoding='utf-8')
        elif ext == '.model':
            path.write_bytes(bytes(content or b''))
        else:
            path.write_text(str(content), encoding='utf-8')
        written.append(fname)
    return written
