"""Typed options of the ``sft`` loader, and the packing rules across loader and model (no torch).

:class:`SFTLoaderConfig` is the loader mapping (``train_loader`` / ``eval_loader``), parsed once by
:func:`foundry_ext.validation.parse` here and in ``config/validate.py``. :func:`check_data` reads
the data before anything heavy is imported: every jsonl row is checked (bad rows are reported
with their line numbers), an MDS folder must be one ``foundry-ext prep sft`` wrote.

Packing (``packing_ratio``) puts several examples in one row. It is only allowed where the model
can keep them apart: our MPT masks attention by ``sequence_id`` (``attn_uses_sequence_id``, turned
on for you), HF models of the families in :data:`PACKABLE_HF` get a per-example block-diagonal
causal mask (``foundry_hf_causal_lm``, which ``hf_causal_lm`` is switched to for you). Anything
else is refused in one line by :func:`packing_problems`; :func:`route_packing` makes the switches.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from foundry_ext.errors import UserError
from foundry_ext.prep.sft_examples import DEFAULT_TRAIN_ON, TRAIN_ON, Fields, check_template_spec, read_rows
from foundry_ext.validation import choice_error, section

FOUNDRY_HF = 'foundry_hf_causal_lm'      # hf_causal_lm that keeps packed examples apart (finetune/hf_model.py)
MPT_NAMES = ('mpt_causal_lm', 'foundry_mpt_causal_lm')
HF_NAMES = ('hf_causal_lm', FOUNDRY_HF)
# HF model types whose attention takes a 4D mask in transformers 4.51 (tested: a packed row's logits
# equal each example's alone, SDPA and eager). GPT-2 flattens such a mask and cannot be packed.
PACKABLE_HF = ('llama', 'mistral', 'qwen2', 'qwen3', 'gemma', 'phi3', 'gpt_neox')
ON_TOO_LONG = ('truncate', 'drop')


@dataclass
class SFTDataset:
    """``dataset:`` of the ``sft`` loader."""
    data: Union[str, list[str]]            # jsonl file(s) / globs, or an MDS folder from `foundry-ext prep sft`
    max_seq_len: int                       # tokens per row (examples are truncated to it)
    split: str = 'train'                   # MDS folder: the split sub-folder
    train_on: str = DEFAULT_TRAIN_ON       # last_assistant | all_assistant | everything
    chat_template: Optional[str] = None    # null: the tokenizer's own, else ChatML; chatml | tokenizer | file | Jinja
    packing_ratio: Union[float, str, None] = None   # examples per row: null (no packing), >= 1, or auto
    trim_padding: bool = True              # cut each batch after its longest row (multiple of 8)
    on_too_long: str = 'truncate'          # truncate | drop examples longer than max_seq_len
    prompt_field: str = 'prompt'           # jsonl field names
    response_field: str = 'response'
    messages_field: str = 'messages'
    shuffle: bool = True
    shuffle_seed: int = 17

    def __post_init__(self) -> None:
        where = section('train_loader.dataset')
        if self.max_seq_len < 2:
            raise UserError(f'{where}.max_seq_len must be >= 2, got {self.max_seq_len}')
        if self.train_on not in TRAIN_ON:
            raise UserError(choice_error(self.train_on, TRAIN_ON, f'{where}.train_on'))
        if self.on_too_long not in ON_TOO_LONG:
            raise UserError(choice_error(self.on_too_long, ON_TOO_LONG, f'{where}.on_too_long'))
        r = self.packing_ratio
        if isinstance(r, str) and r != 'auto':
            raise UserError(f"{where}.packing_ratio must be a number >= 1, auto or null, got {r!r}")
        if not isinstance(r, str) and r is not None and r < 1:
            raise UserError(f'{where}.packing_ratio must be >= 1 (examples per row), got {r!r}')
        if isinstance(self.data, list) and not self.data:
            raise UserError(f'{where}.data is an empty list; give jsonl files or an MDS folder')
        try:
            check_template_spec(self.chat_template)
        except UserError as e:
            raise UserError(f'{where}.{e}') from None

    @property
    def paths(self) -> list[str]:
        return [self.data] if isinstance(self.data, str) else list(self.data)

    @property
    def fields(self) -> Fields:
        return Fields(self.prompt_field, self.response_field, self.messages_field)

    @property
    def packs(self) -> bool:
        return self.packing_ratio is not None and self.packing_ratio != 1


@dataclass
class SFTLoaderConfig:
    """The ``sft`` loader mapping; the DataLoader keys are LLM Foundry's."""
    dataset: SFTDataset
    drop_last: bool = True
    num_workers: int = 0
    pin_memory: Optional[bool] = None
    prefetch_factor: Optional[int] = None
    persistent_workers: Optional[bool] = None
    timeout: int = 0
    label: Optional[str] = None          # eval_loaders entries

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise UserError(f"{section('train_loader')}.num_workers must be an integer >= 0, got {self.num_workers!r}")


# ------------------------------------------------------------------------------ data


def mds_stats(folder: str | Path) -> Optional[dict[str, Any]]:
    """``stats.json`` of an SFT MDS folder written by ``foundry-ext prep sft`` (None if it is not one)."""
    p = Path(folder) / 'stats.json'
    if not Path(folder).is_dir() or not p.is_file():
        return None
    try:
        stats = json.loads(p.read_text())
    except ValueError:
        return None
    return stats if isinstance(stats, dict) and 'splits' in stats else None


def is_mds(ds: SFTDataset) -> bool:
    return len(ds.paths) == 1 and Path(ds.paths[0]).is_dir()


def jsonl_files(ds: SFTDataset) -> list[Path]:
    from foundry_ext.prep.sources import expand_inputs, is_jsonl_file
    try:
        return expand_inputs(ds.paths, is_jsonl_file)
    except UserError as e:
        raise UserError(f"{section('train_loader')}.dataset.data: {e}") from None


def check_data(cfg: SFTLoaderConfig) -> None:
    """The data exists and every jsonl row is usable (one line naming the first bad row)."""
    ds = cfg.dataset
    where = section('train_loader') + '.dataset'
    if is_mds(ds):
        root = Path(ds.paths[0])
        if mds_stats(root) is None:
            if (root / 'index.json').is_file() or (root / ds.split / 'index.json').is_file():
                raise UserError(f'{where}.data: {root} is an MDS folder without the stats.json of `foundry-ext '
                                'prep sft`; convert the jsonl with it, or read it with the finetuning loader')
            raise UserError(f'{where}.data: {root} is a folder but no SFT MDS (no stats.json); give jsonl files '
                            'or the --out folder of `foundry-ext prep sft`')
        if not (root / ds.split / 'index.json').is_file():
            have = sorted(p.name for p in root.iterdir() if (p / 'index.json').is_file())
            raise UserError(f'{where}.split: {root} has no split {ds.split!r} (it has {", ".join(have) or "none"})')
        return
    files = jsonl_files(ds)
    if not files:
        raise UserError(f'{where}.data: no .jsonl file in {ds.paths}')
    try:
        rows, _ = read_rows(files, ds.fields)
    except UserError as e:
        raise UserError(f'{where}: {e}') from None
    if not rows:
        raise UserError(f'{where}.data: {", ".join(map(str, files))} holds no rows')


def finetuning_jsonl(loader: dict[str, Any]) -> list[Path]:
    """Local jsonl files an LLM Foundry ``finetuning`` loader reads (``hf_name: json`` + ``data_files``,
    or a local folder with ``<split>.jsonl``); [] when it reads something else (MDS, the hub, a
    preprocessing_fn)."""
    ds = loader.get('dataset')
    if not isinstance(ds, dict) or ds.get('preprocessing_fn') or not isinstance(ds.get('hf_name'), str):
        return []
    split, name = str(ds.get('split', 'train')), ds['hf_name']
    if name == 'json':
        files = ((ds.get('hf_kwargs') or {}).get('data_files'))
        if isinstance(files, dict):
            files = files.get(split)
        files = [files] if isinstance(files, str) else files if isinstance(files, list) else []
        return [Path(f) for f in files if isinstance(f, str) and Path(f).suffix in ('.jsonl', '.json')]
    p = Path(name) / f'{split}.jsonl'
    return [p] if Path(name).is_dir() and p.is_file() else []


def check_finetuning_rows(loader: dict[str, Any]) -> None:
    """Rows of the local jsonl an LLM Foundry ``finetuning`` loader reads, checked as it would (exact
    keys; ``completion`` is its other name for ``response``), with line numbers."""
    files = finetuning_jsonl(loader)
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{section('train_loader')}.dataset: data file {missing[0]} does not exist")
    for f in files:
        response = 'response'
        try:
            with open(f, encoding='utf-8') as fh:
                first = json.loads(fh.readline() or '{}')
            if isinstance(first, dict) and 'completion' in first and 'response' not in first:
                response = 'completion'
        except ValueError:
            pass
        try:
            read_rows([f], Fields('prompt', response, 'messages'), exact_keys=True)
        except UserError as e:
            raise UserError(f"{section('train_loader')}.dataset: {e}") from None


# ------------------------------------------------------------------------------ packing across sections


def _loaders(cfg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, Any]] = [('train_loader', cfg.get('train_loader'))]
    if cfg.get('eval_loader') is not None:
        out.append(('eval_loader', cfg['eval_loader']))
    out += [(f'eval_loaders[{i}]', ev) for i, ev in enumerate(cfg.get('eval_loaders') or [])]
    return [(w, ld) for w, ld in out if isinstance(ld, dict)]


def packing_loaders(cfg: dict[str, Any]) -> list[str]:
    """The loaders (yaml paths) that pack several examples into a row."""
    out = []
    for where, ld in _loaders(cfg):
        ds = ld.get('dataset')
        r = ds.get('packing_ratio') if isinstance(ds, dict) else None
        if ld.get('name') in ('sft', 'finetuning') and r is not None and r != 1:
            out.append(f'{where}.dataset.packing_ratio')
    return out


def hf_model_type(model: dict[str, Any]) -> Optional[str]:
    """``model_type`` from the local folder's config.json of an hf_causal_lm (None if not readable)."""
    src = model.get('pretrained_model_name_or_path')
    if not isinstance(src, str):
        return None
    p = Path(src).expanduser() / 'config.json'
    try:
        mt = json.loads(p.read_text()).get('model_type')
    except (OSError, ValueError):
        return None
    return str(mt) if mt else None


def _hf_sliding_problem(model: dict[str, Any]) -> Optional[str]:
    src = model.get('pretrained_model_name_or_path')
    try:
        c = json.loads((Path(str(src)).expanduser() / 'config.json').read_text())
    except (OSError, ValueError):
        return None
    if c.get('model_type') in ('qwen2', 'qwen3') and c.get('use_sliding_window'):
        return ("its config turns on use_sliding_window, whose per-layer windows a packed mask does not "
                "reproduce; set packing_ratio: null")
    return None


def packing_problems(cfg: dict[str, Any]) -> list[str]:
    """One line per packing loader whose model cannot keep packed examples apart."""
    where = packing_loaders(cfg)
    model = cfg.get('model') if isinstance(cfg.get('model'), dict) else None
    if not where or model is None:
        return []
    name, first = model.get('name'), where[0]
    fix = 'set packing_ratio: null (padding, no packing)'
    if name in MPT_NAMES:
        attn = model.get('attn_config') if isinstance(model.get('attn_config'), dict) else {}
        if attn.get('attn_uses_sequence_id') is False:
            return [f'{first}: packing needs model.attn_config.attn_uses_sequence_id: true (it is false, so packed '
                    f'examples would attend to each other); remove that line or {fix}']
        learned = model.get('learned_pos_emb', True) and not attn.get('rope') and not attn.get('alibi')
        bad = [w for w in where if learned and _loader_name(cfg, w) == 'finetuning']
        if bad:
            return [f"{bad[0]}: LLM Foundry's finetuning loader does not restart positions per packed example and "
                    'this model uses learned position embeddings; use the sft loader (it does) or ' + fix]
        return []
    if name in HF_NAMES:
        if model.get('use_flash_attention_2') or model.get('attn_implementation') == 'flash_attention_2':
            return []  # flash-attn's varlen path: position ids restart per example (finetune/hf_model.py)
        mt = hf_model_type(model)
        src = model.get('pretrained_model_name_or_path')
        if mt is None and not (isinstance(src, str) and Path(src).expanduser().is_dir()):
            return []  # no local folder: the model check says so
        if mt is None:
            return [f'{first}: cannot read model_type from {model.get("pretrained_model_name_or_path")}/config.json '
                    f'to tell whether this model can mask packed examples apart; {fix}']
        if mt not in PACKABLE_HF:
            return [f"{first}: {name} model_type {mt!r} cannot keep packed examples apart (its attention takes no "
                    f"per-example mask in transformers 4.51; packable: {', '.join(PACKABLE_HF)}); {fix}"]
        sw = _hf_sliding_problem(model)
        return [f'{first}: {name} {sw}'] if sw else []
    return [f'{first}: model {name!r} is not known to mask packed examples apart (sequence_id); use '
            f'foundry_mpt_causal_lm, mpt_causal_lm or hf_causal_lm, or {fix}']


def _loader_name(cfg: dict[str, Any], where: str) -> Any:
    for w, ld in _loaders(cfg):
        if where.startswith(w + '.'):
            return ld.get('name')
    return None


def route_packing(cfg: dict[str, Any]) -> list[str]:
    """Rewrite, in place, the model so packed examples stay apart; one note per change."""
    model = cfg.get('model') if isinstance(cfg.get('model'), dict) else None
    if not packing_loaders(cfg) or model is None:
        return []
    notes = []
    if model.get('name') in MPT_NAMES:
        attn = model.setdefault('attn_config', {})
        if 'attn_uses_sequence_id' not in attn:
            attn['attn_uses_sequence_id'] = True
            notes.append('packing: model.attn_config.attn_uses_sequence_id turned on so packed examples '
                         'attend only within themselves')
    elif model.get('name') == 'hf_causal_lm':
        model['name'] = FOUNDRY_HF
        notes.append(f'packing: model hf_causal_lm runs as {FOUNDRY_HF} (the same model, with a per-example '
                     'attention mask and restarted positions for packed rows)')
    return notes


@dataclass
class SFTMonitorConfig:
    """``sft_monitor`` callback options."""
    log_interval: int = 10       # batches between ft/* metrics

    def __post_init__(self) -> None:
        if self.log_interval < 1:
            raise UserError(f"{section('callbacks.sft_monitor')}: log_interval must be an integer >= 1, "
                            f'got {self.log_interval!r}')
