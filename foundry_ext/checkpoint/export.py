"""`foundry-ext export <checkpoint | run_dir> <hf_dir>`: a Composer checkpoint -> a verified HF folder.

Reads a monolithic ``.pt`` or a sharded (FSDP) checkpoint folder safely (:mod:`.load`), rebuilds the
model the checkpoint describes (LLM Foundry's MPT, an ``hf_causal_lm`` model, or base + LoRA
adapter), writes safetensors + config.json + generation_config.json + the checkpoint's tokenizer
(chat template included) into a temporary folder, reloads that folder with
``AutoModelForCausalLM.from_pretrained`` and compares it with the checkpoint's model
(:mod:`.verify`). Only a folder that passes is renamed into place; otherwise nothing is written.

What is written: a Llama-architecture MPT becomes ``LlamaForCausalLM`` (:mod:`.convert`, no
``trust_remote_code``); any other MPT becomes LLM Foundry's MPT classes with their code in the folder
(``trust_remote_code=True``); an ``hf_causal_lm`` checkpoint keeps its class; a LoRA checkpoint
becomes a PEFT adapter folder, or with ``merge`` the merged model.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from foundry_ext.atomic import atomic_dir
from foundry_ext.checkpoint import verify as V
from foundry_ext.checkpoint.convert import llama_blockers, mpt_to_llama_config, mpt_to_llama_weights
from foundry_ext.checkpoint.hf import write_tokenizer_files
from foundry_ext.checkpoint.load import Checkpoint, read_checkpoint, resolve_checkpoint
from foundry_ext.errors import UserError

__all__ = ['ExportOptions', 'ExportResult', 'export', 'DTYPES', 'training_dtype']

DTYPES = {'fp32': 'float32', 'float32': 'float32', 'bf16': 'bfloat16', 'bfloat16': 'bfloat16',
          'fp16': 'float16', 'float16': 'float16'}
_PRECISION_DTYPE = {'fp32': 'float32', 'amp_bf16': 'bfloat16', 'amp_fp16': 'float16', 'amp_fp8': 'bfloat16'}
ARCHS = ('auto', 'llama', 'mpt')


@dataclass
class ExportOptions:
    source: str                        # a .pt file, a sharded checkpoint folder, or a run folder
    out: str                           # the HF folder to write
    merge: bool = False                # LoRA: write base + adapter merged into one model
    overwrite: bool = False
    dtype: str = 'auto'                # auto (the run's training precision) | fp32 | bf16 | fp16
    arch: str = 'auto'                 # MPT checkpoints: auto (llama when it maps) | llama | mpt
    base: Optional[str] = None         # LoRA: the base model folder (default: the one it was trained on)
    tokenizer: Optional[str] = None    # a tokenizer folder, when the checkpoint carries none
    verify: bool = True
    atol: float = V.ATOL
    kl_tol: float = V.KL_TOL

    def __post_init__(self) -> None:
        if self.dtype != 'auto' and self.dtype not in DTYPES:
            raise UserError(f"--dtype {self.dtype!r} is not one of auto, fp32, bf16, fp16")
        if self.arch not in ARCHS:
            raise UserError(f"--arch {self.arch!r} is not one of {', '.join(ARCHS)}")


@dataclass
class ExportResult:
    out: Path
    source: Path
    architecture: str
    dtype: str
    verdict: Optional[V.Verdict]
    dtype_kl: Optional[float]          # KL of the rounding to ``dtype`` alone (None for fp32)
    load_hint: str
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def training_dtype(precision: Optional[str]) -> str:
    return _PRECISION_DTYPE.get(str(precision), 'float32')


# ------------------------------------------------------------------------------ the source model

def _tokenizer(ck: Checkpoint, opts: ExportOptions, scratch: Path) -> Any:
    from transformers import AutoTokenizer
    if opts.tokenizer:
        return AutoTokenizer.from_pretrained(opts.tokenizer)
    files = ck.hf.get('tokenizer') or {}
    if not files:
        raise UserError(f'{ck.path}: the checkpoint carries no tokenizer; pass --tokenizer <folder>')
    write_tokenizer_files(files, scratch / 'tokenizer')
    return AutoTokenizer.from_pretrained(str(scratch / 'tokenizer'))


def _load_into(model: Any, weights: dict[str, Any], where: Path) -> Any:
    """``weights`` into a model built on the meta device; every parameter must be covered."""
    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    if hasattr(model, 'tie_weights'):
        model.tie_weights()
    del missing  # judged below by what is still on the meta device (tied and recomputed tensors are fine)
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise UserError(f'{where}: the checkpoint has no tensor for {still_meta[0]} ({len(still_meta)} parameters '
                        'missing); it does not match its own config')
    if unexpected:
        raise UserError(f'{where}: checkpoint tensor {unexpected[0]} has no place in the model its config '
                        f'describes ({len(unexpected)} such tensors)')
    return model.float().eval()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """LLM Foundry's MPT warns on every build (learned_pos_emb, GenerationMixin, rope 'factor'): not news."""
    import warnings

    from transformers.utils import logging as hf_logging
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', UserWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)


def runnable_here(cfg: dict[str, Any]) -> dict[str, Any]:
    """An MPT config whose attention runs on this machine: flash-attn kernels (trained on GPUs) -> torch,
    the flash-attn rotary -> HF's (the same non-interleaved rotation). The weights do not change."""
    import importlib.util

    import torch
    attn = dict(cfg.get('attn_config') or {})
    if importlib.util.find_spec('flash_attn') is None or not torch.cuda.is_available():
        if attn.get('attn_impl') == 'flash':
            attn['attn_impl'] = 'torch'
        if attn.get('attn_backend') == 'flash':
            attn['attn_backend'] = 'auto'
        if attn.get('rope') and attn.get('rope_impl', 'dail') == 'dail' and \
                (attn.get('rope_dail_config') or {}).get('type', 'original') == 'original':
            attn['rope_impl'] = 'hf'
            attn['rope_hf_config'] = {'type': 'no_scaling', 'factor': 1.0}
    return {**cfg, 'attn_config': attn}


def _mpt_source(ck: Checkpoint) -> Any:
    from accelerate import init_empty_weights
    with _quiet():
        from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM
    cfg = {k: v for k, v in runnable_here(ck.config).items()
           if not k.startswith('_') and k not in ('model_type', 'architectures')}
    cfg['init_device'] = 'cpu'
    with init_empty_weights(include_buffers=False), _quiet():
        model = MPTForCausalLM(MPTConfig(**cfg))
    return _load_into(model, dict(ck.weights), ck.path)


def _hf_config(content: dict[str, Any]) -> Any:
    from transformers import AutoConfig
    content = {k: v for k, v in content.items() if k not in ('transformers_version', '_name_or_path')}
    try:
        return AutoConfig.for_model(**content)
    except (ValueError, KeyError) as e:
        raise UserError(f"the checkpoint's model_type {content.get('model_type')!r} is unknown to this "
                        f'transformers ({e}); export needs a model class transformers ships') from None


def _hf_source(ck: Checkpoint) -> Any:
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    config = _hf_config(ck.config)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=None)
    return _load_into(model, dict(ck.weights), ck.path)


def _base_folder(ck: Checkpoint, opts: ExportOptions) -> Path:
    pc = ck.peft_config or {}
    base = opts.base or pc.get('base_model_name_or_path') or ck.config.get('_name_or_path')
    if not base or not Path(str(base)).expanduser().is_dir():
        raise UserError(f'{ck.path}: the LoRA base model {base!r} is not a local folder here; pass --base '
                        '<the HF folder the adapter was trained on>')
    return Path(str(base)).expanduser().resolve()


def lora_config(content: dict[str, Any]) -> Any:
    """A PEFT ``LoraConfig`` from the stored adapter config (PEFT 0.16 wants the enum peft_type)."""
    import dataclasses

    from peft import LoraConfig
    names = {f.name for f in dataclasses.fields(LoraConfig)}
    return LoraConfig(**{k: v for k, v in content.items() if k in names and k not in ('peft_type',)})


def _peft_source(ck: Checkpoint, base: Path) -> Any:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(base), torch_dtype=torch.float32, trust_remote_code=False)
    peft_model = get_peft_model(model, lora_config(ck.peft_config or {}))
    _, unexpected = peft_model.load_state_dict(dict(ck.weights), strict=False)
    if unexpected:
        raise UserError(f'{ck.path}: adapter tensor {unexpected[0]} does not fit the base model {base} '
                        f'({len(unexpected)} such tensors); pass --base <the folder it was trained on>')
    n_lora = sum(1 for k in ck.weights if 'lora_' in k)
    if n_lora == 0:
        raise UserError(f'{ck.path}: the checkpoint has a LoRA config but no lora_ tensors')
    return peft_model.eval()


# ------------------------------------------------------------------------------ writing

def _generation_config(tok: Any, source_folder: Optional[Path]) -> Any:
    from transformers import GenerationConfig
    gen = None
    if source_folder is not None and (source_folder / 'generation_config.json').is_file():
        gen = GenerationConfig.from_pretrained(str(source_folder))
    gen = gen or GenerationConfig()
    for k in ('bos_token_id', 'eos_token_id', 'pad_token_id'):
        if getattr(tok, k, None) is not None:
            setattr(gen, k, getattr(tok, k))
    return gen


def _write_llama(src: Any, ck: Checkpoint, tok: Any, dtype: Any, tmp: Path) -> None:
    from accelerate import init_empty_weights
    from transformers import LlamaConfig, LlamaForCausalLM
    tokens = {k: getattr(tok, k, None) for k in ('bos_token_id', 'eos_token_id', 'pad_token_id')}
    config = LlamaConfig(**mpt_to_llama_config(ck.config, tokens))
    weights = mpt_to_llama_weights(ck.config, {k: v for k, v in src.state_dict().items()})
    with init_empty_weights(include_buffers=False):
        model = LlamaForCausalLM(config)
    model.load_state_dict(weights, strict=False, assign=True)
    model.tie_weights()
    model.to(dtype).save_pretrained(str(tmp), safe_serialization=True)


def _portable_mpt_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Our attention class -> LLM Foundry's (same weights), so the folder needs no foundry_ext."""
    attn = dict(cfg.get('attn_config') or {})
    if attn.get('attn_type') == 'foundry_attention':
        attn.update(attn_type='grouped_query_attention', attn_impl='torch')
        attn.pop('attn_backend', None)
        attn.pop('attn_bias_padding_only', None)
    return {**cfg, 'attn_config': attn}


def _write_mpt(src: Any, ck: Checkpoint, dtype: Any, tmp: Path) -> None:
    from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM
    from llmfoundry.utils.huggingface_hub_utils import edit_files_for_hf_compatibility
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    CONFIG_MAPPING._extra_content['mpt'] = MPTConfig       # as LLM Foundry's hf_checkpointer does
    MPTConfig.register_for_auto_class()
    MPTForCausalLM.register_for_auto_class('AutoModelForCausalLM')
    src.config = MPTConfig(**{k: v for k, v in _portable_mpt_config(runnable_here(ck.config)).items()
                              if not k.startswith('_') and k not in ('model_type', 'architectures')})
    src.to(dtype).save_pretrained(str(tmp), safe_serialization=True)
    src.float()
    edit_files_for_hf_compatibility(str(tmp))


def _export_tokenizer(tok: Any, model: Any) -> tuple[Any, list[str]]:
    """The tokenizer to write: the checkpoint's, minus ``token_type_ids`` when the model takes none
    (else ``model.generate(**tokenizer(text))`` fails)."""
    import copy
    import inspect
    names = list(getattr(tok, 'model_input_names', []))
    inner = model.get_base_model() if hasattr(model, 'get_base_model') else model
    if 'token_type_ids' not in names or 'token_type_ids' in inspect.signature(inner.forward).parameters:
        return tok, []
    out = copy.deepcopy(tok)
    out.model_input_names = [n for n in names if n != 'token_type_ids']
    out.init_kwargs['model_input_names'] = out.model_input_names
    return out, ["the tokenizer listed token_type_ids, which this model does not take; dropped from "
                 'model_input_names, so model.generate(**tokenizer(text)) works']


def _rounded(model: Any, dtype: Any) -> Any:
    """The model with its parameters rounded to ``dtype`` (buffers such as RoPE tables untouched, as a
    reloaded model recomputes them; computing in fp32 still), in place."""
    import torch
    if dtype != torch.float32:
        with torch.no_grad():
            for p in model.parameters():
                p.data = p.data.to(dtype).float()
    return model


# ------------------------------------------------------------------------------ the command

def export(opts: ExportOptions, log: Callable[[str], None] = print) -> ExportResult:
    import torch
    t0 = time.perf_counter()
    out = Path(opts.out)
    if out.exists() and not opts.overwrite:
        raise UserError(f'{out} already exists; pass --overwrite to replace it or choose another output folder')
    source = resolve_checkpoint(opts.source)
    if out.resolve() == source or source.is_relative_to(out.resolve()):
        raise UserError(f'{out} holds the checkpoint being exported; choose another output folder')
    ck = read_checkpoint(source)
    log(f"read {'sharded ' if ck.sharded else ''}checkpoint {ck.path} ({len(ck.weights)} tensors, "
        f"precision {ck.precision or 'unknown'})")
    dname = training_dtype(ck.precision) if opts.dtype == 'auto' else DTYPES[opts.dtype]
    dtype = getattr(torch, dname)
    cfg = ck.config
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix='foundry-export-') as scratch_s:
        scratch = Path(scratch_s)
        tok = _tokenizer(ck, opts, scratch)
        source_folder: Optional[Path] = None
        peft = ck.peft_config is not None
        if peft:
            source_folder = _base_folder(ck, opts)
            src = _peft_source(ck, source_folder)
            kind = 'merged' if opts.merge else 'adapter'
            arch = 'merged ' + type(src.get_base_model()).__name__ if opts.merge else 'LoRA adapter'
        elif cfg.get('model_type') == 'mpt':
            blockers = llama_blockers(cfg, ck.weights)
            if opts.arch == 'llama' and blockers:
                raise UserError(f"--arch llama: this MPT does not map onto Llama: {'; '.join(blockers)}")
            kind = 'llama' if not blockers and opts.arch != 'mpt' else 'mpt'
            arch = 'LlamaForCausalLM' if kind == 'llama' else 'MPTForCausalLM'
            if blockers:
                notes.append(f"not Llama-compatible ({'; '.join(blockers)}): written as LLM Foundry's MPT classes")
            src = _mpt_source(ck)
        else:
            if opts.merge:
                raise UserError(f'{ck.path}: --merge is for LoRA checkpoints; this one has no adapter')
            src = _hf_source(ck)
            kind, arch = 'hf', type(src).__name__
            name = cfg.get('_name_or_path')
            source_folder = Path(name) if name and Path(name).is_dir() else None
        ids = V.probe_ids(tok, int(getattr(src.config, 'vocab_size', len(tok))))
        dtype_kl = None
        ref: Optional[V.Reference]
        if dtype != torch.float32 and opts.verify:
            exact = V.reference(src, ids, n_prompts=0)
            ref = V.reference(_rounded(src, dtype), ids)
            dtype_kl = V.compare(exact, src).kl
        else:
            ref = V.reference(src, ids) if opts.verify else None
        with atomic_dir(out, overwrite=opts.overwrite) as tmp:
            if kind == 'merged':
                merged = src.merge_and_unload()
                merged.to(dtype).save_pretrained(str(tmp), safe_serialization=True)
                del merged
            elif kind == 'adapter':
                src.peft_config['default'].base_model_name_or_path = str(source_folder)
                src.to(dtype).save_pretrained(str(tmp), safe_serialization=True)
            elif kind == 'llama':
                try:
                    _write_llama(src, ck, tok, dtype, tmp)
                except (ValueError, RuntimeError) as e:
                    raise UserError(f'{ck.path}: cannot convert to Llama: {" ".join(str(e).split())[:240]}') from None
            elif kind == 'mpt':
                _write_mpt(src, ck, dtype, tmp)
            else:
                src.to(dtype).save_pretrained(str(tmp), safe_serialization=True)
            out_tok, tok_notes = _export_tokenizer(tok, src)
            notes += tok_notes
            del src
            out_tok.save_pretrained(str(tmp))
            if kind != 'adapter':
                _generation_config(tok, source_folder).save_pretrained(str(tmp))
            verdict = _verify(tmp, ref, tok, kind, source_folder, opts) if ref else None
            hint = _load_hint(out, kind, source_folder)
            (tmp / 'foundry_export.json').write_text(json.dumps({
                'source': str(ck.path), 'sharded': ck.sharded, 'architecture': arch, 'dtype': dname,
                'verification': verdict.__dict__ if verdict else None, 'dtype_kl': dtype_kl, 'load': hint},
                indent=1, default=str))
            _umask_modes(tmp)
    return ExportResult(out, ck.path, arch, dname, verdict, dtype_kl, hint, notes, time.perf_counter() - t0)


def _umask_modes(folder: Path) -> None:
    """safetensors writes its files 0600; give every file the mode the user's umask asks for (as any other
    file they write), so a server running as another user can read the model."""
    mask = os.umask(0)
    os.umask(mask)
    for p in folder.rglob('*'):
        if p.is_file():
            p.chmod(0o666 & ~mask)


def _verify(tmp: Path, ref: V.Reference, tok: Any, kind: str, base: Optional[Path],
            opts: ExportOptions) -> V.Verdict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        if kind == 'adapter':
            from peft import PeftModel
            model = PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(str(base), torch_dtype=torch.float32), str(tmp))
        elif kind == 'mpt':
            # transformers names the dynamic module after the folder; the hidden temp name is no module name
            with tempfile.TemporaryDirectory() as d:
                link = Path(d) / 'foundry_export_check'
                link.symlink_to(tmp.resolve(), target_is_directory=True)
                model = AutoModelForCausalLM.from_pretrained(str(link), torch_dtype=torch.float32,
                                                             trust_remote_code=True)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(tmp), torch_dtype=torch.float32)
        out_tok = AutoTokenizer.from_pretrained(str(tmp))
    except Exception as e:  # the written folder does not even load: that is the verdict
        msg = ' '.join(str(e).split())[:300]
        raise UserError(f'export verification failed: the written folder does not load ({type(e).__name__}: {msg}); '
                        f'nothing was written to {opts.out}') from None
    config = json.loads((tmp / 'config.json').read_text()) if (tmp / 'config.json').is_file() else None
    gen_file = tmp / 'generation_config.json'
    gen = json.loads(gen_file.read_text()) if gen_file.is_file() else None
    verdict = V.compare(ref, model.float(), atol=opts.atol, kl_tol=opts.kl_tol)
    verdict.problems += V.tokenizer_problems(tok, out_tok, config, gen)
    verdict.problems += V.generate_problems(model, out_tok)
    if not verdict.ok:
        more = f' (+{len(verdict.problems) - 1} more)' if len(verdict.problems) > 1 else ''
        raise UserError(f'export verification failed: {verdict.problems[0]}{more}; {verdict.summary()}; '
                        f'nothing was written to {opts.out}')
    return verdict


def _load_hint(out: Path, kind: str, base: Optional[Path]) -> str:
    if kind == 'adapter':
        return (f"PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained('{base}'), '{out}') "
                '(or --merge for one folder)')
    if kind == 'mpt':
        return (f"AutoModelForCausalLM.from_pretrained('{out}', trust_remote_code=True): the folder carries LLM "
                "Foundry's MPT code (flattened); it needs torch, transformers and einops, not llm-foundry "
                '(flash attention also needs flash-attn)')
    return f"AutoModelForCausalLM.from_pretrained('{out}') -- no trust_remote_code needed"
