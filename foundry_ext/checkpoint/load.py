"""Read Composer checkpoints without running their pickles: monolithic ``.pt`` files and sharded
(FSDP ``state_dict_type: sharded``, torch.distributed.checkpoint) folders.

:func:`safe_load` is the one safe loader of this package: ``torch.load(weights_only=True)`` with the
few harmless globals Composer's state uses allowed (``datetime.timedelta``, numpy arrays of the RNG
state, ``TorchVersion``) and every other global replaced by an inert :class:`Opaque` record, so no
code from the file runs and an unknown callback's state cannot stop an export.

:func:`read_checkpoint` returns what export and the load check need -- the model's tensors (Composer's
``model.`` prefix removed), the Hugging Face metadata Composer stores beside them (config, tokenizer
files, PEFT config) and the training precision -- and reads only those parts of a sharded folder.

Public and stable (callers: checkpoint/export.py, fit.py, callback.py, tests): ``safe_load(f, mmap)``,
``load_sharded(folder, keys)``, ``resolve_checkpoint(path)``, ``read_checkpoint(path)``, ``is_sharded``,
``checkpoint_shapes``, ``Checkpoint``, ``Opaque``. Every failure is a one-line :class:`UserError`.
"""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from foundry_ext.errors import UserError

__all__ = ['Opaque', 'safe_load', 'load_sharded', 'is_sharded', 'resolve_checkpoint', 'read_checkpoint',
           'checkpoint_shapes', 'Checkpoint']

METADATA = '.metadata'          # torch.distributed.checkpoint's index file of a sharded folder


class Opaque:
    """Stands in for an object of a class we do not load (never called, never imported)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f'<{type(self).__name__}>'


def _opaque(name: str) -> type:
    return type(name.rsplit('.', 1)[-1], (Opaque,), {'__module__': 'foundry_ext.checkpoint.load'})


def _harmless() -> dict[str, Any]:
    """Globals whose construction runs no user code (by their checkpoint names): the same allow-list
    as the resumption loader, :func:`foundry_ext.safeload.allowed_by_name`."""
    from foundry_ext.safeload import allowed_by_name
    return allowed_by_name()


def safe_load(f: str | os.PathLike | io.BytesIO, mmap: bool = True) -> Any:
    """``torch.load`` of a Composer checkpoint (or one object of a sharded one) that runs no code
    from the file: weights-only unpickling, harmless globals allowed, all others :class:`Opaque`."""
    import torch
    try:
        if isinstance(f, io.BytesIO):
            names = torch.serialization.get_unsafe_globals_in_checkpoint(f)
            f.seek(0)
            mmap = False
        else:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(f))
    except (RuntimeError, ValueError, OSError, pickle.UnpicklingError) as e:
        raise UserError(f'{f}: cannot read it as a torch checkpoint ({_first_line(e)}); compressed (.lz4/.tar) '
                        'checkpoints must be unpacked to a plain .pt first') from None
    known = _harmless()
    allowed: list[Any] = [(known.get(n) or _opaque(n), n) for n in names]
    allowed += [v for v in known.values() if isinstance(v, type)]   # BUILD checks the object's own type
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(f, map_location='cpu', weights_only=True, mmap=mmap)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError) as e:
        import re
        blocked = re.search(r'GLOBAL (\S+) whose module \S+ is blocked', str(e))
        if blocked:
            raise UserError(f'{f}: refused: the checkpoint would call {blocked.group(1)} when unpickled (code '
                            'execution); it was not written by Composer training, do not load it') from None
        raise UserError(f'{f}: cannot load the checkpoint ({_first_line(e)}); is the file complete?') from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


# ------------------------------------------------------------------------------ sharded folders

class _MetadataUnpickler(pickle.Unpickler):
    """The ``.metadata`` index holds only torch.distributed.checkpoint records, sizes and dtypes."""

    def find_class(self, module: str, name: str) -> Any:
        import torch
        if module == 'torch.distributed.checkpoint.metadata' or module.startswith('torch.distributed.checkpoint.'):
            import importlib
            return getattr(importlib.import_module(module), name)
        if (module, name) == ('torch', 'Size'):
            return torch.Size
        kinds = (torch.dtype, torch.layout, torch.memory_format)
        if module == 'torch' and isinstance(getattr(torch, name, None), kinds):
            return getattr(torch, name)
        if (module, name) in {('collections', 'OrderedDict'), ('builtins', 'set'), ('builtins', 'frozenset'),
                              ('builtins', 'slice'), ('builtins', 'tuple'), ('builtins', 'list'), ('builtins', 'dict')}:
            import builtins
            import collections
            return getattr(collections if module == 'collections' else builtins, name)
        if module in ('torch._utils',) and name.startswith('_rebuild'):
            import torch._utils
            return getattr(torch._utils, name)
        return _opaque(f'{module}.{name}')


def is_sharded(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a torch.distributed.checkpoint folder (it holds ``.metadata``)."""
    return Path(path).is_dir() and (Path(path) / METADATA).is_file()


def load_sharded(folder: str | os.PathLike, keys: Optional[set[str]] = None) -> dict[str, Any]:
    """A sharded checkpoint folder -> the nested state dict (only ``keys``, dotted prefixes such as
    ``state.model``), assembled on CPU in this one process; nothing from the files is executed."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    class Reader(FileSystemReader):
        def read_metadata(self):  # the stock reader unpickles .metadata with plain pickle
            from torch.distributed.checkpoint.metadata import StorageMeta
            with open(Path(self.path) / METADATA, 'rb') as fh:
                md = _MetadataUnpickler(fh).load()
            if getattr(md, 'storage_meta', None) is None:
                md.storage_meta = StorageMeta()
            md.storage_meta.load_id = self.load_id
            return md

    class Planner(_EmptyStateDictLoadPlanner):
        def load_bytes(self, read_item, value):  # the stock planner uses torch.load(weights_only=False)
            obj = safe_load(value)
            if self.flatten_state_dict:
                from torch.distributed.checkpoint._traverse import set_element
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    folder = Path(folder)
    sd: dict[str, Any] = {}
    try:
        _load_state_dict(sd, storage_reader=Reader(str(folder)), planner=Planner(keys=keys), no_dist=True)
    except UserError:
        raise
    except Exception as e:  # torch wraps reader errors in CheckpointException
        raise UserError(f'{folder}: cannot read the sharded checkpoint ({_first_line(e)}); are all '
                        '__<rank>_0.distcp files and .metadata there?') from None
    return sd


# ------------------------------------------------------------------------------ which checkpoint

def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, a sharded checkpoint folder, a ``checkpoints/`` folder or a run folder ->
    the checkpoint to read (the ``latest*`` link, else the newest ``ep*-ba*``)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f'checkpoint {p} does not exist; give a Composer .pt file, a sharded checkpoint folder '
                        'or a run folder (runs/<name>)')
    if p.is_file() or is_sharded(p):
        return p.resolve()
    for folder in (p / 'checkpoints', p):
        if not folder.is_dir():
            continue
        cands = [c for c in folder.iterdir() if (c.is_file() and c.suffix == '.pt') or is_sharded(c)]
        if not cands:
            continue
        latest = [c for c in cands if c.name.startswith('latest') and c.exists()]
        if latest:
            return latest[0].resolve()
        return max(cands, key=lambda c: (_batch_of(c.name), c.stat().st_mtime)).resolve()
    raise UserError(f'no Composer checkpoint (*.pt or a sharded ep*-ba* folder) in {p} or {p / "checkpoints"}; '
                    'train with save_folder set first')


def _batch_of(name: str) -> int:
    import re
    m = re.search(r'ba(\d+)', name)
    return int(m.group(1)) if m else -1


# ------------------------------------------------------------------------------ what export needs

@dataclass
class Checkpoint:
    path: Path
    weights: dict[str, Any]                   # model tensors, Composer's leading ``model.`` removed
    hf: dict[str, Any] = field(default_factory=dict)   # state.integrations.huggingface (config, tokenizer, peft)
    precision: Optional[str] = None           # Composer's training precision (fp32, amp_bf16, ...)
    sharded: bool = False

    @property
    def config(self) -> dict[str, Any]:
        try:
            return dict(self.hf['model']['config']['content'])
        except (KeyError, TypeError):
            raise UserError(f'{self.path}: the checkpoint carries no Hugging Face model config; it was not written '
                            'by an LLM Foundry model (mpt_causal_lm, foundry_mpt_causal_lm, hf_causal_lm)') from None

    @property
    def peft_config(self) -> Optional[dict[str, Any]]:
        pc = (self.hf.get('model') or {}).get('peft_config')
        return dict(pc['content']) if isinstance(pc, dict) and 'content' in pc else None


def _strip(weights: dict[str, Any]) -> dict[str, Any]:
    import torch
    return {k[len('model.'):] if k.startswith('model.') else k: v for k, v in weights.items()
            if isinstance(v, torch.Tensor)}


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The model weights + HF metadata of a monolithic or sharded Composer checkpoint (or run folder)."""
    p = resolve_checkpoint(path)
    if is_sharded(p):
        sd = load_sharded(p, keys={'state.model', 'state.integrations', 'state.metadata'})
        sharded = True
    else:
        sd = safe_load(p)
        sharded = False
    state = sd.get('state') if isinstance(sd, dict) else None
    if not isinstance(state, dict) or not isinstance(state.get('model'), dict):
        raise UserError(f'{p}: not a Composer checkpoint (no state.model); export reads checkpoints that '
                        'Composer / LLM Foundry training wrote')
    hf = (state.get('integrations') or {}).get('huggingface') or {}
    meta = state.get('metadata') or {}
    return Checkpoint(p, _strip(state['model']), hf if isinstance(hf, dict) else {},
                      meta.get('precision') if isinstance(meta, dict) else None, sharded)


def checkpoint_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the model tensors (keys as Composer stores them, ``model.`` included),
    from a sharded folder's index alone or a memory-mapped ``.pt``."""
    p = Path(path)
    if is_sharded(p):
        with open(p / METADATA, 'rb') as fh:
            md = _MetadataUnpickler(fh).load()
        out = {}
        for fqn, item in md.state_dict_metadata.items():
            if fqn.startswith('state.model.') and hasattr(item, 'size'):
                out[fqn[len('state.model.'):]] = tuple(item.size)
        return out
    sd = safe_load(p)
    model = ((sd.get('state') or {}).get('model') if isinstance(sd, dict) else None) or {}
    return {k: tuple(v.shape) for k, v in model.items() if hasattr(v, 'shape')}
