"""`foundry-ext show-labels`: the tokens a run trains on, marked, before the run.

    foundry-ext show-labels yamls/finetune/sft-mpt-cpu.yaml --n 3
    foundry-ext show-labels data/sft_mds --n 2 --train_on last_assistant
    foundry-ext show-labels data/sft/train.jsonl --tokenizer data/tokenizer

Each example is decoded with its trained spans between ``«`` and ``»`` (green on a terminal) and
its counts; the end shows the trained-token fraction over the data (of the example tokens, and of
all token slots of the batches after packing / padding). A yaml's ``sft`` loader is read with the
same code that trains (:mod:`foundry_ext.prep.sft_examples`); an LLM Foundry ``finetuning`` loader
is built with LLM Foundry itself and its first batches are shown.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Optional, Sequence

from foundry_ext.errors import UserError
from foundry_ext.prep.sft_examples import IGNORE, TRAIN_ON, stitch, trained_count

OPEN, CLOSE = '«', '»'
GREEN, RESET = '\033[32;1m', '\033[0m'


def mark(ids: Sequence[int], labels: Sequence[int], tokenizer: Any, color: bool = False) -> str:
    """Decoded text with the trained spans marked (a label at position i trains token i; i = 0 never)."""
    out, k = [], 0
    trained = [i > 0 and labels[i] != IGNORE for i in range(len(ids))]
    while k < len(ids):
        j = k
        while j < len(ids) and trained[j] == trained[k]:
            j += 1
        text = tokenizer.decode(list(ids[k:j]), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if trained[k]:
            out.append(f'{GREEN}{text}{RESET}' if color else f'{OPEN}{text}{CLOSE}')
        else:
            out.append(text)
        k = j
    return ''.join(out)


def _example_block(i: int, where: str, ids: Sequence[int], labels: Sequence[int], tokenizer: Any, color: bool) -> str:
    n, t = len(ids), trained_count(labels)
    head = f'--- example {i}{f" ({where})" if where else ""}: {n} tokens, {t} trained ({100 * t / max(n, 1):.1f}%)'
    return f'{head}\n{mark(ids, labels, tokenizer, color)}'


def _summary(pairs: list[tuple[list[int], list[int]]], slots: Optional[int], what: str) -> str:
    tokens = sum(len(i) for i, _ in pairs)
    trained = sum(trained_count(lab) for _, lab in pairs)
    line = (f'trained-token fraction: {100 * trained / max(tokens, 1):.1f}% of {tokens:,} example tokens '
            f'({len(pairs):,} {what})')
    if slots:
        line += f'; {100 * trained / slots:.1f}% of the {slots:,} token slots of the batches'
    if trained == 0:
        line += '\nwarning: nothing is trained; check train_on and the data'
    return line


def _tokenizer(name: str) -> Any:
    from foundry_ext.prep.tokenizer import load_eos
    load_eos(Path(name))
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(name)


def show_sft(ds: Any, tokenizer: Any, n: int = 3, seed: Optional[int] = None, color: bool = False,
             batch_size: int = 8) -> str:
    """Examples of an ``sft`` dataset section (:class:`~foundry_ext.finetune.config.SFTDataset`)."""
    from foundry_ext.finetune.config import is_mds
    from foundry_ext.finetune.loader import load_examples, mds_examples
    data, lengths, info = load_examples(ds, tokenizer, getattr(tokenizer, 'name_or_path', ''))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    turns = mds_examples(ds.paths[0], ds.split, 20000) if is_mds(ds) else data.examples
    pairs = []
    for t in turns:
        ids, labels = stitch(t, ds.train_on, tokenizer.eos_token_id)
        pairs.append((ids[:ds.max_seq_len], labels[:ds.max_seq_len]))
    order = list(range(len(pairs)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    tname = info['template'].name if info['template'] is not None else 'none (prompt/response rows)'
    lines = [f'{info["source"]}: {info["examples"]:,} examples; train_on {ds.train_on}; chat template {tname}; '
             f'max_seq_len {ds.max_seq_len} ({info["truncated"]} truncated)']
    lines += [_example_block(k + 1, '', *pairs[i], tokenizer, color) for k, i in enumerate(order[:n])]
    slots = _slots(pairs, ds, lengths, batch_size)
    lines.append(_summary(pairs, slots, 'examples' + (' (first 20,000)' if len(pairs) == 20000 else '')))
    return '\n'.join(lines)


def _slots(pairs, ds, lengths, batch_size: int) -> Optional[int]:
    """Token slots the batches take (rows x trimmed length) for this packing / padding choice."""
    from foundry_ext.finetune.packing import auto_packing_ratio, batch_slots
    if not pairs:
        return None
    ratio = None
    if ds.packs:
        ratio = auto_packing_ratio(lengths, batch_size, ds.max_seq_len, ds.shuffle_seed) \
            if ds.packing_ratio == 'auto' else float(ds.packing_ratio)
    return batch_slots([len(i) for i, _ in pairs], batch_size, ds.max_seq_len, ratio, ds.trim_padding)


def show_llmfoundry(loader: dict[str, Any], tokenizer: Any, n: int = 3, color: bool = False) -> str:
    """The first rows LLM Foundry's ``finetuning`` loader builds for this config."""
    from llmfoundry.data.finetuning.dataloader import build_finetuning_dataloader
    kw = {k: loader[k] for k in ('drop_last', 'num_workers', 'timeout') if k in loader}
    kw.setdefault('num_workers', 0)
    spec = build_finetuning_dataloader(tokenizer, max(n, 8), dict(loader['dataset']), pin_memory=False,
                                       prefetch_factor=None, persistent_workers=False, **kw)
    pairs, slots = [], 0
    for b, batch in enumerate(spec.dataloader):
        for r in range(batch['input_ids'].shape[0]):
            m = batch['attention_mask'][r].bool()
            pairs.append((batch['input_ids'][r][m].tolist(), batch['labels'][r][m].tolist()))
        slots += batch['input_ids'].numel()
        if b >= 3:
            break
    ds = loader['dataset']
    lines = [f"LLM Foundry finetuning loader: target_prompts {ds.get('target_prompts', 'none')}, target_responses "
             f"{ds.get('target_responses', 'last')}, packing_ratio {ds.get('packing_ratio')} (rows as LLM Foundry "
             'builds them)']
    lines += [_example_block(k + 1, 'row', *pairs[k], tokenizer, color) for k in range(min(n, len(pairs)))]
    lines.append(_summary(pairs, slots, 'rows of the first batches'))
    return '\n'.join(lines)


def show_labels(source: str, n: int = 3, tokenizer: Optional[str] = None, train_on: Optional[str] = None,
                split: Optional[str] = None, max_seq_len: Optional[int] = None, seed: Optional[int] = None,
                color: bool = False, cfg: Optional[dict[str, Any]] = None) -> str:
    """``source``: a training yaml (its train_loader; ``cfg`` is that yaml loaded with its overrides by the
    command, config/ being a floor above), an SFT MDS folder, or jsonl file(s)."""
    from foundry_ext.finetune.config import SFTDataset, mds_stats
    from foundry_ext.validation import parse
    if n < 0:
        raise UserError(f'--n must be >= 0, got {n}')
    if train_on is not None and train_on not in TRAIN_ON:
        raise UserError(f'--train_on {train_on!r} is not one of {", ".join(TRAIN_ON)}')
    p = Path(source)
    if p.suffix in ('.yaml', '.yml'):
        if cfg is None:
            raise UserError(f'{p}: show-labels needs the loaded yaml (run it as `foundry-ext show-labels`)')
        loader = cfg.get('train_loader')
        tok_name = tokenizer or ((cfg.get('tokenizer') or {}).get('name'))
        if not isinstance(loader, dict) or not tok_name:
            raise UserError(f'{p}: needs a train_loader and a tokenizer section')
        tok = _tokenizer(str(tok_name))
        if loader.get('name') == 'finetuning':
            return show_llmfoundry(loader, tok, n, color)
        if loader.get('name') != 'sft':
            raise UserError(f"{p}: train_loader {loader.get('name')!r} is not an SFT loader (sft or finetuning)")
        ds_map = dict(loader.get('dataset') or {})
    elif p.is_dir():
        stats = mds_stats(p)
        if stats is None:
            raise UserError(f'{p} is not an SFT MDS folder of `foundry-ext prep sft` (no stats.json)')
        tok_name = tokenizer or stats.get('tokenizer')
        split = split or next(iter(stats['splits']))
        ds_map = {'data': str(p), 'split': split, 'max_seq_len': max_seq_len or stats.get('max_seq_len', 2048)}
        tok = _tokenizer(str(tok_name))
    else:
        if not tokenizer:
            raise UserError('show-labels on jsonl needs --tokenizer <folder> (or give a training yaml)')
        ds_map = {'data': str(p), 'max_seq_len': max_seq_len or 2048}
        tok = _tokenizer(tokenizer)
    if train_on:
        ds_map['train_on'] = train_on
    if max_seq_len:
        ds_map['max_seq_len'] = max_seq_len
    if split:
        ds_map['split'] = split
    ds = parse(SFTDataset, ds_map, 'dataset')
    return show_sft(ds, tok, n, seed, color)
