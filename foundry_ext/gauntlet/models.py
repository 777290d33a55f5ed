"""Load the model to evaluate: a Composer checkpoint, a training run folder, or an HF model folder.

A Composer checkpoint of an LLM Foundry model carries the model's HF config and tokenizer files
(``state.integrations.huggingface``), so it is rebuilt without the training yaml. What comes back
is a :class:`LoadedModel`: ``forward(ids, mask) -> logits`` plus a cached variant for shared
multiple-choice contexts, a generation step for left-padded batches, the tokenizer, the context
length, and a hash of the model's content (weights, config, tokenizer) that keys the results
cache, so a checkpoint and a symlink to it (``latest-rank0.pt``), or a copy, share one entry.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from foundry_ext.errors import UserError
from foundry_ext.gauntlet.config import ModelSpec


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
    step: Optional[Callable] = None  # generation: step(ids, mask, past, use_cache) -> (last logits, past)

    @property
    def pad_id(self) -> int:
        t = self.tokenizer
        return t.pad_token_id if t.pad_token_id is not None else (t.eos_token_id or 0)


# Above this many bytes of weights, each tensor is hashed on an evenly strided sample of its elements.
_FULL_HASH_BYTES = 256 << 20
# Config entries that do not change what the model computes.
_CONFIG_NOISE = {'_name_or_path', 'transformers_version', 'architectures', 'torch_dtype', 'init_device',
                 'auto_map', '_attn_implementation_autoset', '_commit_hash'}


def content_hash(model: Any, tokenizer: Any) -> str:
    """A stable hash of what decides the model's outputs: every weight (name, dtype, shape and bytes;
    above 256 MB of weights an evenly strided sample of each tensor), the model config and the
    tokenizer's vocabulary. File names play no part: a checkpoint, a symlink to it and a copy of it
    share one cache entry, and so does an HF export of the same weights. Weights are read on the CPU
    as stored (no arithmetic), so the hash does not depend on the device."""
    import torch
    sd = model.state_dict()
    total = sum(v.numel() * v.element_size() for v in sd.values() if isinstance(v, torch.Tensor))
    stride_for = max(1, -(-total // _FULL_HASH_BYTES))
    h = hashlib.blake2b(digest_size=16)
    for k in sorted(sd):
        v = sd[k]
        if not isinstance(v, torch.Tensor):
            continue
        v = v.detach()
        h.update(f'{k}|{v.dtype}|{tuple(v.shape)}'.encode())
        flat = v.reshape(-1)
        if stride_for > 1 and flat.numel() > 4096:
            flat = flat[::stride_for]
        flat = flat.contiguous().cpu()
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy())
    cfg = getattr(model, 'config', None)
    if cfg is not None and hasattr(cfg, 'to_dict'):
        d = {k: v for k, v in cfg.to_dict().items() if k not in _CONFIG_NOISE}
        h.update(json.dumps(d, sort_keys=True, default=str).encode())
    if tokenizer is not None:
        vocab = sorted(tokenizer.get_vocab().items())
        probe = tokenizer(' Tokens, 12\n\nA: b')['input_ids']  # special tokens added, prefix-space handling
        h.update(json.dumps([vocab, probe, tokenizer.eos_token_id, tokenizer.pad_token_id]).encode())
    return h.hexdigest()


def _pick_device(device: Optional[str]) -> str:
    import torch
    if device:
        return device
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def wrap(model, tokenizer, name: str, max_seq_len: Optional[int] = None, model_hash: str = '',
         device: Optional[str] = None) -> LoadedModel:
    """A torch causal LM (HF-style: ``model(input_ids=..., attention_mask=...).logits``) -> LoadedModel."""
    device = _pick_device(device)
    model = model.eval()
    cfg = getattr(model, 'config', None)
    if max_seq_len is None:
        max_seq_len = (getattr(cfg, 'max_seq_len', None) or getattr(cfg, 'max_position_embeddings', None)
                       or getattr(cfg, 'n_positions', None) or 2048)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise UserError(f'{name}: the tokenizer has neither a pad nor an eos token; add a pad token')
    if not model_hash:
        model_hash = content_hash(model, tokenizer)
    model = model.to(device)

    def forward(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits

    def forward_cached(ids, past):
        out = model(input_ids=ids, past_key_values=past, use_cache=True)
        return out.logits, out.past_key_values

    return LoadedModel(name, model, tokenizer, int(max_seq_len), model_hash, device, forward, forward_cached,
                       generation_step(model))


def generation_step(model: Any) -> Callable:
    """``step(ids, mask, past, use_cache) -> (logits of the last position, past)`` for left-padded
    batches, with the positions HF ``generate`` gives them: models that take ``position_ids`` get
    ``cumsum(mask) - 1`` (so a left-padded prompt has the positions of the unpadded one: RoPE,
    learned positions); LLM Foundry's MPT derives them from the full attention mask itself (and ALiBi
    needs only the mask). ``mask`` always covers the cached tokens plus ``ids``."""
    inner = getattr(model, 'module', model)  # FSDP / DDP wrappers
    if hasattr(inner, 'get_base_model'):  # PEFT
        inner = inner.get_base_model()
    params = inspect.signature(inner.forward).parameters
    mpt = getattr(getattr(inner, 'config', None), 'model_type', None) == 'mpt'
    takes_pos = 'position_ids' in params and not mpt
    keep = next((k for k in ('logits_to_keep', 'num_logits_to_keep') if k in params), None)

    def step(ids, mask, past, use_cache=True):
        kw: dict[str, Any] = {'input_ids': ids, 'attention_mask': mask if mpt else mask.long(),
                              'use_cache': use_cache}
        if past is not None:
            kw['past_key_values'] = past
        if takes_pos:
            pos = mask.long().cumsum(-1) - 1
            pos.masked_fill_(~mask, 1)
            kw['position_ids'] = pos[:, -ids.shape[1]:]
        if keep is not None:
            kw[keep] = 1
        out = model(**kw)
        return out.logits[:, -1], (out.past_key_values if use_cache else None)

    return step


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
    path = Path(path)
    if not path.is_file():
        raise UserError(f'checkpoint {path} not found')
    from foundry_ext.safeload import safe_load
    try:
        # never unpickle arbitrary objects from a checkpoint (weights_only + the allow-list)
        state = safe_load(path)['state']
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
    return wrap(model, tok, str(path), cfg.get('max_seq_len'), '', device)


def load_hf_dir(path: str | Path, tokenizer_dir: Optional[str] = None, device: Optional[str] = None) -> LoadedModel:
    path = Path(path)
    if not (path / 'config.json').is_file():
        raise UserError(f'{path}: not an HF model folder (no config.json)')
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=False, torch_dtype='auto').float()
    tok = AutoTokenizer.from_pretrained(tokenizer_dir or str(path))
    return wrap(model, tok, str(path), None, '', device)


def load_model(spec: ModelSpec, device: Optional[str] = None) -> LoadedModel:
    """A :class:`ModelSpec` (``checkpoint`` | ``run_dir`` | ``hf_path``, + ``tokenizer``) -> LoadedModel."""
    if spec.hf_path:
        m = load_hf_dir(spec.hf_path, spec.tokenizer, device)
    else:
        ck = spec.checkpoint or latest_checkpoint(str(spec.run_dir))
        m = load_composer_checkpoint(ck, spec.tokenizer, device, spec.max_seq_len)
    if spec.max_seq_len:
        m.max_seq_len = int(spec.max_seq_len)
    if spec.name:
        m.name = str(spec.name)
    return m
