"""Prompt/response and chat jsonl -> MDS that LLM Foundry's ``finetuning`` loader (and ours, ``sft``) read.

Each output sample is LLM Foundry's tokenized format, column ``turns`` (json): a list of
``{"input_ids": prompt ids, "labels": response ids}``, one per assistant turn, with the exact
boundaries of :mod:`foundry_ext.prep.sft_examples` (the end-of-turn marker is in the response,
template boilerplate in the prompt). What is trained is chosen at train time (``train_on``).

Input records (one JSON object per line): ``{"prompt": ..., "response": ...}`` (field names
configurable) or ``{"messages": [...]}`` ending with an assistant message, rendered with the
tokenizer's chat template, ``--chat_template`` (a file, a template string or ``chatml``), else
ChatML. The template used is written to ``stats.json`` (``chat_template``), and the ``sft`` loader
puts it into the tokenizer that is saved with the trained model.

A bad record (not JSON, missing fields, no assistant turn, a template that rejects it) stops the
conversion with one line naming the file and line (and how many others are bad); nothing is
written. ``--skip_bad_records`` skips them instead and counts them. Examples longer than
``max_seq_len`` are truncated by the loader (or dropped with ``--on_too_long drop``); examples whose
last response starts beyond ``max_seq_len`` are dropped (nothing of it could be trained).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from foundry_ext.atomic import atomic_dir, clean_stale_temp
from foundry_ext.errors import UserError
from foundry_ext.prep.sft_examples import (
    CHATML,
    Fields,
    Row,
    bad_rows_error,
    iter_rows,
    resolve_template,
    stitch,
    tokenize_rows,
    trained_count,
)

__all__ = ['CHATML', 'load_chat_tokenizer', 'convert_finetuning', 'finetuning_table']

_CHUNK = 512  # rows rendered and tokenized per batch call


def load_chat_tokenizer(tokenizer_dir: str | Path, chat_template: Optional[str]):
    """(HF tokenizer, the :class:`~foundry_ext.prep.sft_examples.ChatTemplate` used)."""
    from foundry_ext.prep.tokenizer import load_eos
    load_eos(Path(tokenizer_dir))  # the one clear error for a missing / incomplete folder
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tok.model_max_length = int(1e30)
    return tok, resolve_template(tok, chat_template, str(tokenizer_dir))


def _new_stats() -> dict[str, Any]:
    return {'read': 0, 'written': 0, 'bad_records': 0, 'too_long': 0, 'truncated': 0, 'dropped_too_long': 0,
            'dropped_no_target': 0, 'chat': 0, 'prompt_response': 0, 'tokens': 0, 'trained_tokens': 0,
            'bad_record_examples': []}


def convert_finetuning(inputs: list[tuple[str, str | Path]], tokenizer_dir: str | Path, out: str | Path,
                       max_seq_len: int = 2048, chat_template: Optional[str] = None,
                       prompt_field: str = 'prompt', response_field: str = 'response',
                       messages_field: str = 'messages', on_too_long: str = 'truncate',
                       skip_bad_records: bool = False, overwrite: bool = False,
                       compression: Optional[str] = None) -> dict:
    """``[(split, jsonl path)]`` -> ``out/<split>/`` MDS + ``out/stats.json``; returns the stats."""
    if max_seq_len < 2:
        raise UserError(f'--max_seq_len must be >= 2, got {max_seq_len}')
    if on_too_long not in ('truncate', 'drop'):
        raise UserError(f'--on_too_long must be truncate or drop, got {on_too_long!r}')
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f'output folder {out} already exists; pass --overwrite to replace it or choose another --out')
    for _, p in inputs:
        if not Path(p).is_file():
            raise UserError(f'input {p} is not a file; give jsonl files as [split=]path')
    tok, template = load_chat_tokenizer(tokenizer_dir, chat_template)
    from streaming import MDSWriter

    from foundry_ext.prep.mds_writer import parse_compression
    parse_compression(compression)
    fields = Fields(prompt_field, response_field, messages_field)
    eos = tok.eos_token_id
    stats: dict = {'max_seq_len': max_seq_len, 'tokenizer': str(tokenizer_dir), 'chat_template_name': template.name,
                   'chat_template': template.text, 'on_too_long': on_too_long, 'format': 'llmfoundry-turns',
                   'splits': {}}
    by_split: dict[str, list[Path]] = {}
    for split, p in inputs:
        by_split.setdefault(split, []).append(Path(p))
    clean_stale_temp(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for split, files in by_split.items():
            s = _new_stats()
            bad: list[str] = []
            with MDSWriter(out=str(tmp / split), columns={'turns': 'json'}, compression=compression) as w:
                chunk: list[Row] = []
                for path in files:
                    for r in iter_rows(path, fields):
                        s['read'] += 1
                        if isinstance(r, str):
                            bad.append(r)
                            continue
                        chunk.append(r)
                        if len(chunk) >= _CHUNK:
                            _write(chunk, tok, template, eos, max_seq_len, on_too_long, w, s, bad, skip_bad_records)
                            chunk = []
                if chunk:
                    _write(chunk, tok, template, eos, max_seq_len, on_too_long, w, s, bad, skip_bad_records)
            if bad and not skip_bad_records:
                raise bad_rows_error(bad, s['read'], fields)
            s['bad_records'] = len(bad)
            s['bad_record_examples'] = bad[:5]
            if s['written'] == 0:
                raise UserError(f'split {split}: no usable example out of {s["read"]} records '
                                f'({s["bad_records"]} bad, {s["dropped_too_long"]} too long, '
                                f'{s["dropped_no_target"]} without a response token within --max_seq_len)')
            if not s['bad_record_examples']:
                del s['bad_record_examples']
            stats['splits'][split] = s
        (tmp / 'stats.json').write_text(json.dumps(stats, indent=2) + '\n')
    return stats


def _write(rows: list[Row], tok, template, eos, max_seq_len: int, on_too_long: str, w, s: dict,
           bad: list[str], skip_bad: bool) -> None:
    try:
        all_turns = tokenize_rows(rows, tok, template)
    except UserError:
        if not skip_bad:
            raise
        # a template rejected one row: find it (and any other) row by row
        all_turns = []
        for r in rows:
            try:
                all_turns += tokenize_rows([r], tok, template)
            except UserError as e1:
                bad.append(str(e1).split('; ')[0])
                all_turns.append([])
    for row, turns in zip(rows, all_turns):
        if not turns:
            continue
        s[row.kind] += 1
        ids, labels = stitch(turns, 'last_assistant', eos)
        n = len(ids)
        if n > max_seq_len:
            s['too_long'] += 1
            if on_too_long == 'drop':
                s['dropped_too_long'] += 1
                continue
        if trained_count(labels[:max_seq_len]) == 0:
            s['dropped_no_target'] += 1
            continue
        if n > max_seq_len:
            s['truncated'] += 1
        w.write({'turns': [{'input_ids': list(p), 'labels': list(r)} for p, r in turns]})
        s['written'] += 1
        s['tokens'] += min(n, max_seq_len)
        s['trained_tokens'] += trained_count(stitch(turns, 'all_assistant', eos)[1][:max_seq_len])


def finetuning_table(stats: dict) -> str:
    cols = ['read', 'bad_records', 'too_long', 'truncated', 'dropped_too_long', 'dropped_no_target', 'written']
    lines = [f"{'split':<10}" + ''.join(f'{c:>18}' for c in cols)]
    for split, s in stats['splits'].items():
        lines.append(f'{split:<10}' + ''.join(f'{s[c]:>18}' for c in cols))
        for ex in s.get('bad_record_examples', []):
            lines.append(f'  skipped: {ex}')
    return '\n'.join(lines)
