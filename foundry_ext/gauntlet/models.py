"""Load the model to evaluate: a Composer checkpoint, a training run folder, or an HF model folder.

A Composer checkpoint of an LLM Foundry model carries the model's HF config and tokenizer files
(``state.integrations.huggingface``), so it is rebuilt without the training yaml. What comes back
is a :class:`LoadedModel`: ``forward(ids, mask) -> logits`` plus a cached variant for shared
multiple-choice contexts, the tokenizer, the context length, and a content hash for the cache.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from foundry_ext.errors import UserError


@dataclass
class LoadedModel:
    name: str
    model: Any
    tokenizer: Any
    max_seq_len: int
    model_hash: str
    device: str
    forward: Callable
    forward_cached: Optional[Callable] = None

    @property
    def pad_id(self) -> int:
        t = self.tokenizer
        return t.pad_token_id if t.pad_token_id is not None else (t.eos_token_id or 0)


def _file_hash(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        p = Path(p)
        h.update(p.name.encode())
        with open(p, 'rb') as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:16]


def _pick_device(device: Optional[str]) -> str:
    import torch
    if device:
        return device
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def wrap(model, tokenizer, name: str, max_seq_len: Optional[int] = None, model_hash: str = '',
         device: Optional[str] = None) -> LoadedModel:
    """A torch causal LM (HF-style: ``model(input_ids=..., attention_mask=...).logits``) -> LoadedModel."""
    device = _pick_device(device)
    model = model.to(device).eval()
    cfg = getattr(model, 'config', None)
    if max_seq_len is None:
        max_seq_len = (getattr(cfg, 'max_seq_len', None) or getattr(cfg, 'max_position_embeddings', None)
                       or getattr(cfg, 'n_positions', None) or 2048)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise UserError(f'{name}: the tokenizer has neither a pad nor an eos token; add a pad token')
    if not model_hash:
        h = hashlib.sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes()[:4096])
            h.update(str(float(v.float().sum())).encode())
        model_hash = h.hexdigest()[:16]

    def forward(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits

    def forward_cached(ids, past):
        out = model(input_ids=ids, past_key_values=past, use_cache=True)
        return out.logits, out.past_key_values

    return LoadedModel(name, model, tokenizer, int(max_seq_len), model_hash, device, forward, forward_cached)


def latest_checkpoint(run_dir: str | Path) -> Path:
    ck = Path(run_dir) / 'checkpoints'
    cands = [p for p in ck.glob('*.pt') if p.is_file()] if ck.is_dir() else []
    if not cands:
        raise UserError(f'no Composer checkpoint (*.pt) under {ck}; train first, e.g. '
                        f'`python scripts/train.py yamls/pretrain/tiny-cpu.yaml run_name={Path(run_dir).name}`')
    latest = [p for p in cands if p.name.startswith('latest')]
    return (latest or sorted(cands, key=lambda p: p.stat().st_mtime))[-1].resolve()


def load_composer_checkpoint(path: str | Path, tokenizer_dir: Optional[str] = None,
                             device: Optional[str] = None, max_seq_len: Optional[int] = None) -> LoadedModel:
    """Rebuild an LLM Foundry / HF model from a Composer checkpoint's embedded HF config + weights."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise UserError(f'checkpoint {path} not found')
    try:
        state = torch.load(path, map_location='cpu', weights_only=False)['state']
        hf = state['integrations']['huggingface']
        cfg = dict(hf['model']['config']['content'])
    except (KeyError, TypeError, RuntimeError, EOFError) as e:
        raise UserError(f'{path}: not a Composer checkpoint of an LLM Foundry/HF model ({e})') from None
    model_type = cfg.get('model_type')
    if model_type == 'mpt':
        from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM
        cfg.pop('model_type', None)
        cfg['init_device'] = 'cpu'
        if max_seq_len and not cfg.get('learned_pos_emb', True):
            cfg['max_seq_len'] = int(max_seq_len)  # RoPE/ALiBi: no weights depend on the length
        model = MPTForCausalLM(MPTConfig(**{k: v for k, v in cfg.items() if not k.startswith('_')}))
    else:
        from transformers import AutoConfig, AutoModelForCausalLM
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    sd = {k[len('model.'):] if k.startswith('model.') else k: v for k, v in state['model'].items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if 'rotary' not in m and 'inv_freq' not in m]
    if missing:
        raise UserError(f'{path}: checkpoint does not match its config (missing {missing[:3]})')
    from transformers import AutoTokenizer
    if tokenizer_dir:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
        files = (hf.get('tokenizer') or {})
        if not files:
            raise UserError(f'{path}: no tokenizer inside the checkpoint; set tokenizer: <folder>')
        with tempfile.TemporaryDirectory() as d:
            for name, f in files.items():
                content = f['content']
                mode = 'w' if isinstance(content, (str, dict, list)) else 'wb'
                with open(os.path.join(d, name), mode) as out:
                    if isinstance(content, (dict, list)):
                        import json
                        json.dump(content, out)
                    elif isinstance(content, str):
                        out.write(content)
                    else:
                        out.write(bytes(content))
            tok = AutoTokenizer.from_pretrained(d)
    return wrap(model, tok, str(path), cfg.get('max_seq_len'), _file_hash([path]), device)


def load_hf_dir(path: str | Path, tokenizer_dir: Optional[str] = None, device: Optional[str] = None) -> LoadedModel:
    path = Path(path)
    if not (path / 'config.json').is_file():
        raise UserError(f'{path}: not an HF model folder (no config.json)')
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=False, torch_dtype='auto').float()
    tok = AutoTokenizer.from_pretrained(tokenizer_dir or str(path))
    weights = [p for p in path.iterdir() if p.suffix in ('.safetensors', '.bin')] + [path / 'config.json']
    return wrap(model, tok, str(path), None, _file_hash(weights), device)


def load_model(spec: dict, device: Optional[str] = None) -> LoadedModel:
    """``{checkpoint: <.pt>}`` | ``{run_dir: runs/<name>}`` | ``{hf_path: <folder>}`` (+ ``tokenizer``)."""
    if not isinstance(spec, dict):
        raise UserError(f'model must be a mapping with one of checkpoint / run_dir / hf_path, got {spec!r}')
    tok = spec.get('tokenizer')
    given = [k for k in ('checkpoint', 'run_dir', 'hf_path') if spec.get(k)]
    if len(given) != 1:
        raise UserError('model: give exactly one of checkpoint (Composer .pt), run_dir (a training run '
                        f'folder) or hf_path (HF model folder); got {given or "none"}')
    if given[0] == 'hf_path':
        m = load_hf_dir(spec['hf_path'], tok, device)
    else:
        ck = spec.get('checkpoint') or latest_checkpoint(spec['run_dir'])
        m = load_composer_checkpoint(ck, tok, device, spec.get('max_seq_len'))
    if spec.get('max_seq_len'):
        m.max_seq_len = int(spec['max_seq_len'])
    if spec.get('name'):
        m.name = str(spec['name'])
    return m
