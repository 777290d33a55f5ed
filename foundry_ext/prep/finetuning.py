"""Prompt/response and chat jsonl -> MDS that LLM Foundry's ``finetuning`` dataloader reads.

Each output sample is LLM Foundry's tokenized format, column ``turns`` (json): a list of
``{"input_ids": prompt ids, "labels": response ids}``, one per assistant turn, produced by
LLM Foundry's own ``tokenize_formatted_example``. Its loader builds ``labels`` with the
prompt tokens masked (``target_prompts: none``), so the loss is on responses only.

Input records (one JSON object per line):
- ``{"prompt": ..., "response": ...}`` (field names configurable), or
- ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}`` ending with
  an assistant message; rendered with the tokenizer's chat template, or ``--chat_template``
  (a file, a template string, or ``chatml``), else LLM Foundry's default ChatML template.

Reported per split: records read, written, bad records (not JSON / wrong shape, with line
numbers; ``--strict`` stops instead), examples longer than ``max_seq_len`` (truncated by the
loader, or dropped with ``--on_too_long drop``) and examples with no trainable response
token left after truncation (dropped, as LLM Foundry's converter does).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from foundry_ext.atomic import atomic_dir, clean_stale_temp
from foundry_ext.errors import UserError
from foundry_ext.prep.sources import open_bytes

CHATML = ('{% for message in messages %}'
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          '{% endfor %}'
          '{% if add_generation_prompt %}'
          "{{ '<|im_start|>assistant\n' }}"
          '{% endif %}')


def load_chat_tokenizer(tokenizer_dir: str | Path, chat_template: Optional[str]):
    """(HF tokenizer, which template is used: 'tokenizer' | 'given' | 'llm-foundry default')."""
    from foundry_ext.prep.tokenizer import load_eos
    load_eos(Path(tokenizer_dir))  # the one clear error for a missing / incomplete folder
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tok.model_max_length = int(1e30)
    source = 'tokenizer' if getattr(tok, 'chat_template', None) else 'llm-foundry default'
    if chat_template:
        if chat_template == 'chatml':
            tok.chat_template = CHATML
        elif Path(chat_template).is_file():
            tok.chat_template = Path(chat_template).read_text(encoding='utf-8')
        elif '{%' in chat_template or '{{' in chat_template:
            tok.chat_template = chat_template
        else:
            raise UserError(f'--chat_template {chat_template!r} is not a file, a Jinja template or "chatml"')
        source = 'given'
    return tok, source


def _example(obj, prompt_field: str, response_field: str, messages_field: str) -> tuple[dict, str]:
    if not isinstance(obj, dict):
        raise ValueError(f'a JSON {type(obj).__name__}, not an object')
    if messages_field in obj:
        msgs = obj[messages_field]
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get('role'), str) and isinstance(m.get('content'), str)
                for m in msgs):
            raise ValueError(f'"{messages_field}" must be a non-empty list of {{"role", "content"}} strings')
        if msgs[-1]['role'] != 'assistant':
            raise ValueError('the last message must be from the assistant')
        return {'messages': [{'role': m['role'], 'content': m['content']} for m in msgs]}, 'chat'
    p, r = obj.get(prompt_field), obj.get(response_field)
    if isinstance(p, str) and isinstance(r, str):
        return {'prompt': p, 'response': r}, 'prompt_response'
    raise ValueError(f'needs "{prompt_field}" and "{response_field}" strings, or a "{messages_field}" list')


def convert_finetuning(inputs: list[tuple[str, str | Path]], tokenizer_dir: str | Path, out: str | Path,
                       max_seq_len: int = 2048, chat_template: Optional[str] = None,
                       prompt_field: str = 'prompt', response_field: str = 'response',
                       messages_field: str = 'messages', on_too_long: str = 'truncate',
                       strict: bool = False, overwrite: bool = False, compression: Optional[str] = None,
                       target_prompts: str = 'none', target_responses: str = 'last') -> dict:
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
    tok, template_source = load_chat_tokenizer(tokenizer_dir, chat_template)
    from llmfoundry.data.finetuning.tasks import (
        is_valid_ift_example,
        stitch_turns_decoder_only,
        tokenize_formatted_example,
    )
    from streaming import MDSWriter

    from foundry_ext.prep.mds_writer import parse_compression
    parse_compression(compression)
    stats: dict = {'max_seq_len': max_seq_len, 'tokenizer': str(tokenizer_dir), 'chat_template': template_source,
                   'on_too_long': on_too_long, 'target_prompts': target_prompts,
                   'target_responses': target_responses, 'splits': {}}
    by_split: dict[str, list[Path]] = {}
    for split, p in inputs:
        by_split.setdefault(split, []).append(Path(p))
    clean_stale_temp(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for split, files in by_split.items():
            s = {'read': 0, 'written': 0, 'bad_records': 0, 'too_long': 0, 'truncated': 0,
                 'dropped_too_long': 0, 'dropped_no_target': 0, 'chat': 0, 'prompt_response': 0,
                 'tokens': 0}
            examples: list[str] = []
            with MDSWriter(out=str(tmp / split), columns={'turns': 'json'}, compression=compression) as w:
                for path in files:
                    with open_bytes(path) as f:
                        for lineno, raw in enumerate(f, 1):
                            if not raw.strip():
                                continue
                            s['read'] += 1
                            where = f'{path}:{lineno}'
                            try:
                                ex, kind = _example(json.loads(raw.decode('utf-8')), prompt_field,
                                                    response_field, messages_field)
                                sample = tokenize_formatted_example(ex, tok)
                            except Exception as e:  # noqa: BLE001 - ours or llmfoundry's (templates, roles)
                                first = str(e).splitlines()[0][:200] if str(e) else ''
                                if isinstance(e, (ValueError, UnicodeDecodeError, KeyError, TypeError)):
                                    msg = f'{where} is not a usable example ({first})'
                                    fix = 'fix or remove that line, or leave out --strict'
                                else:
                                    msg = f'{where} could not be templated/tokenized ({type(e).__name__}: {first})'
                                    fix = 'fix that line or pass --chat_template'
                                if strict:
                                    raise UserError(f'{msg}; {fix}') from None
                                s['bad_records'] += 1
                                if len(examples) < 5:
                                    examples.append(msg)
                                continue
                            s[kind] += 1
                            ids, _ = stitch_turns_decoder_only(sample['turns'], target_prompts, target_responses)
                            n_tok = len(ids)
                            if n_tok > max_seq_len:
                                s['too_long'] += 1
                                if on_too_long == 'drop':
                                    s['dropped_too_long'] += 1
                                    continue
                            if not is_valid_ift_example(max_seq_len, target_prompts, target_responses, True, sample):
                                s['dropped_no_target'] += 1
                                continue
                            if n_tok > max_seq_len:
                                s['truncated'] += 1
                            w.write({'turns': [{'input_ids': list(t['input_ids']), 'labels': list(t['labels'])}
                                               for t in sample['turns']]})
                            s['written'] += 1
                            s['tokens'] += min(n_tok, max_seq_len)
            if s['written'] == 0:
                raise UserError(f'split {split}: no usable example out of {s["read"]} records '
                                f'({s["bad_records"]} bad, {s["dropped_too_long"]} too long, '
                                f'{s["dropped_no_target"]} without a response token); check the input fields')
            stats['splits'][split] = {**s, 'bad_record_examples': examples} if examples else s
        (tmp / 'stats.json').write_text(json.dumps(stats, indent=2) + '\n')
    return stats


def finetuning_table(stats: dict) -> str:
    cols = ['read', 'bad_records', 'too_long', 'truncated', 'dropped_too_long', 'dropped_no_target', 'written']
    lines = [f"{'split':<10}" + ''.join(f'{c:>18}' for c in cols)]
    for split, s in stats['splits'].items():
        lines.append(f'{split:<10}' + ''.join(f'{s[c]:>18}' for c in cols))
        for ex in s.get('bad_record_examples', []):
            lines.append(f'  skipped: {ex}')
    return '\n'.join(lines)
