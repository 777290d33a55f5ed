"""`sft`: the supervised fine-tuning dataloader (registered in ``llmfoundry_dataloaders``).

    train_loader:
      name: sft
      dataset: {data: data/sft/train.jsonl, max_seq_len: 256, train_on: all_assistant,
                chat_template: null, packing_ratio: auto}
      num_workers: 0

Reads prompt/response or chat jsonl straight (checked and tokenized when the loader is built, so a
bad row or a template that rejects a conversation stops the run before it starts), or an MDS folder
of ``foundry-ext prep sft``. The chat template used (the tokenizer's own, else ChatML; an MDS folder's
is in its stats.json) is set on the tokenizer the model saves, so checkpoints and HF exports carry it
(``tokenizer_config.json`` ``chat_template``). Batches: :class:`~foundry_ext.finetune.collate.SFTCollator`.
Options: :class:`~foundry_ext.finetune.config.SFTLoaderConfig`.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Optional

from foundry_ext.errors import UserError
from foundry_ext.finetune.config import SFTDataset, SFTLoaderConfig, is_mds, jsonl_files, mds_stats
from foundry_ext.prep.sft_examples import ChatTemplate, Turns, read_rows, resolve_template, stitch, tokenize_rows
from foundry_ext.validation import parse

log = logging.getLogger('foundry_ext')

__all__ = ['build_sft_dataloader', 'load_examples', 'mds_examples', 'set_template']


class ListDataset:
    """Tokenized examples in memory (map-style, for torch's DataLoader and Composer's sampler)."""

    def __init__(self, examples: list[Turns]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {'turns': self.examples[i]}


def set_template(tokenizer: Any, template: ChatTemplate) -> Optional[str]:
    """Put the template on the tokenizer (saved with the model); a note when it replaces another."""
    old = getattr(tokenizer, 'chat_template', None)
    tokenizer.chat_template = template.text
    if old and old != template.text:
        return f"sft: {template.name} replaces the tokenizer's own chat template in the saved model"
    return None


def mds_examples(root: str | Path, split: str, limit: Optional[int] = None) -> list[Turns]:
    """The first ``limit`` examples of an SFT MDS split, read straight from its shards (no cache)."""
    import json

    from streaming.base.format import reader_from_json

    from foundry_ext.prep.sft_examples import as_turns
    index = json.loads((Path(root) / split / 'index.json').read_text())
    out: list[Turns] = []
    for shard in index['shards']:
        reader = reader_from_json(str(root), split, shard)
        for i in range(reader.samples):
            out.append(as_turns(reader.get_item(i)))
            if limit is not None and len(out) >= limit:
                return out
    return out


def load_examples(ds: SFTDataset, tokenizer: Any, tokenizer_name: str = '') -> tuple[Any, list[int], dict[str, Any]]:
    """(examples or None for an MDS folder, token lengths of (a sample of) them, summary)."""
    from foundry_ext.prep.sft_examples import trained_count
    eos = tokenizer.eos_token_id
    if is_mds(ds):
        root = Path(ds.paths[0])
        stats = mds_stats(root)
        if stats is None:
            raise UserError(f'sft: {root} is not an MDS folder of `foundry-ext prep sft` (no stats.json)')
        sample = mds_examples(root, ds.split, 2000)
        lengths = [min(len(stitch(t, ds.train_on, eos)[0]), ds.max_seq_len) for t in sample]
        template = ChatTemplate(stats['chat_template'], stats.get('chat_template_name', 'the MDS chat template')) \
            if stats.get('chat_template') else None
        split = (stats.get('splits') or {}).get(ds.split, {})
        return None, lengths, {'examples': split.get('written', len(sample)), 'template': template,
                               'source': f'{root}/{ds.split}', 'truncated': split.get('truncated', 0),
                               'dropped_too_long': 0, 'dropped_no_target': 0}
    files = jsonl_files(ds)
    rows, _ = read_rows(files, ds.fields)
    template = resolve_template(tokenizer, ds.chat_template, tokenizer_name) \
        if any(r.messages is not None for r in rows) or ds.chat_template else None
    examples, lengths = [], []
    counts = {'truncated': 0, 'dropped_too_long': 0, 'dropped_no_target': 0}
    for turns in tokenize_rows(rows, tokenizer, template):
        ids, labels = stitch(turns, ds.train_on, eos)
        if len(ids) > ds.max_seq_len:
            if ds.on_too_long == 'drop':
                counts['dropped_too_long'] += 1
                continue
            if trained_count(labels[:ds.max_seq_len]) == 0:
                counts['dropped_no_target'] += 1
                continue
            counts['truncated'] += 1
        examples.append(turns)
        lengths.append(min(len(ids), ds.max_seq_len))
    if not examples:
        raise UserError(f'sft: no usable example in {", ".join(map(str, files))} ({len(rows)} rows: '
                        f'{counts["dropped_too_long"]} too long, {counts["dropped_no_target"]} without a trained token '
                        f'within max_seq_len={ds.max_seq_len}); raise max_seq_len')
    return ListDataset(examples), lengths, {'examples': len(examples), 'template': template,
                                            'source': ', '.join(map(str, files)), **counts}


def build_sft_dataloader(tokenizer: Any, device_batch_size: Any, **loader: Any) -> Any:
    """LLM Foundry registry entry (``llmfoundry_dataloaders: sft``); options: :class:`SFTLoaderConfig`."""
    from composer.core.data_spec import DataSpec
    from composer.utils import dist
    from llmfoundry.data.utils import get_tokens_per_batch_func
    from torch.utils.data import DataLoader

    from foundry_ext.data.corpus_text import loader_kwargs
    from foundry_ext.finetune.collate import SFTCollator
    from foundry_ext.finetune.packing import auto_packing_ratio

    where = 'eval_loader' if loader.get('label') else 'train_loader'
    cfg = parse(SFTLoaderConfig, {k: v for k, v in loader.items() if k != 'name'}, where)
    ds = cfg.dataset
    if tokenizer is None:
        raise UserError(f'{where}: the sft loader needs a tokenizer section')
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = max(1, int(device_batch_size))
    dataset, lengths, info = load_examples(ds, tokenizer, getattr(tokenizer, 'name_or_path', ''))
    notes = []
    if info['template'] is not None:
        note = set_template(tokenizer, info['template'])
        if note:
            notes.append(note)
    ratio: Optional[float] = None
    if ds.packs:
        ratio = auto_packing_ratio(lengths, batch, ds.max_seq_len, ds.shuffle_seed) \
            if ds.packing_ratio == 'auto' else float(ds.packing_ratio)  # type: ignore[arg-type]
    collate = SFTCollator(tokenizer.pad_token_id, tokenizer.eos_token_id, ds.max_seq_len, ds.train_on, batch,
                          ratio, ds.trim_padding)
    raw_batch = int(batch * ratio) if ratio and ratio > 1 else batch
    sampler = None
    if dataset is None:  # an MDS folder: streamed by LLM Foundry's dataset (shuffle, resumption, ranks)
        from llmfoundry.data.finetuning.tasks import StreamingFinetuningDataset
        dataset = StreamingFinetuningDataset(tokenizer=tokenizer, local=str(Path(ds.paths[0])), split=ds.split,
                                             shuffle=ds.shuffle, shuffle_seed=ds.shuffle_seed, batch_size=raw_batch,
                                             max_seq_len=ds.max_seq_len, packing_ratio=ratio)
    else:
        sampler = dist.get_sampler(dataset, drop_last=cfg.drop_last, shuffle=ds.shuffle, seed=ds.shuffle_seed)
    dl = DataLoader(dataset, batch_size=raw_batch, sampler=sampler, collate_fn=collate, drop_last=cfg.drop_last,
                    timeout=cfg.timeout, **loader_kwargs(cfg.num_workers, cfg.pin_memory, cfg.prefetch_factor,
                                                         cfg.persistent_workers))
    if dist.get_global_rank() == 0:
        tname = info['template'].name if info['template'] is not None else 'none (prompt/response rows)'
        pack = (f"packing {ratio:g} examples/row{' (auto)' if ds.packing_ratio == 'auto' else ''}"
                if ratio and ratio > 1 else 'no packing')
        dropped = info['dropped_too_long'] + info['dropped_no_target']
        # said once on stderr, like the other loaders' notes (LLM Foundry's log level does not cover ours)
        print(f"foundry_ext: sft {where}: {info['examples']} examples from {info['source']}; train_on {ds.train_on}; "
              f"chat template {tname}; {pack}; {info['truncated']} truncated, {dropped} dropped", file=sys.stderr)
        for n in notes:
            print(f'foundry_ext: {n}', file=sys.stderr)
    return DataSpec(dl, get_num_tokens_in_batch=get_tokens_per_batch_func())
