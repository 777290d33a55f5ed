"""`foundry-ext sft-data`: an instruction set generated from the embedded corpus, with a held-out split.

Deterministic (same corpus + seed -> byte-identical files) and offline, in seconds. Two tasks:

* ``record_field``: a ``records`` document in the user message and a question about one of its
  fields (``How old is Ada Berg?``, ``What is the email address of ...``); the answer is the value.
* ``word_problem``: the corpus's ``arithmetic`` lines as word problems (``Uma has 12 shells and
  gets 7 more. How many shells does Uma have now?``); the answer is the number.

Training rows come from the corpus's ``train`` documents, held-out ones from its ``val`` documents
(and no held-out question appears in training). About half the rows carry a system prompt, a
quarter of the training conversations ask a second question (multi-turn). Files under ``out``:

* ``train.jsonl``, ``val.jsonl``: SFT rows (``{"messages": [...]}``, or ``{"prompt", "response"}``
  with ``--style prompt_response``) for the ``sft`` loader / ``foundry-ext prep sft``;
* ``heldout.jsonl``: the held-out questions with answer and answer format, for ``foundry-ext sft-eval``;
* ``gauntlet/``: the same questions as LLM Foundry ``generation_task_with_answers`` tasks (context
  rendered with the chat template the SFT run uses), with ``tasks.yaml`` and ``gauntlet.yaml``;
* ``manifest.json``: seed, counts, template and sha256 of every file.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any, Iterator, Optional

from foundry_ext.atomic import atomic_dir
from foundry_ext.errors import UserError

TASKS = ('record_field', 'word_problem')
SYSTEM_PROMPTS = ('Answer with the value only.', 'You are a helpful assistant. Reply with just the answer.',
                  'Give a short, exact answer.')
_NAMES = ('Ada', 'Bruno', 'Chen', 'Dara', 'Elif', 'Femi', 'Gita', 'Hugo', 'Ines', 'Jonas', 'Kaia', 'Luca',
          'Mara', 'Nils', 'Omar', 'Priya', 'Quinn', 'Rosa', 'Sami', 'Tariq', 'Uma', 'Vera', 'Wen', 'Yara', 'Zoe')
_THINGS = ('apples', 'marbles', 'books', 'coins', 'stickers', 'pencils', 'shells', 'cards', 'stamps', 'beads')
# field -> (question templates, answer format)
_FIELD_QUESTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    'age': (('How old is {name}?', 'What age does the record give for {name}?'), r'\d{1,3}'),
    'born': (('In which year was {name} born?', 'What is the birth year of {name}?'), r'\d{4}'),
    'city': (('In which city does {name} live?', 'What city is listed for {name}?'), r'[A-Z][a-z]+'),
    'occupation': (('What does {name} work as?', 'What is the occupation of {name}?'), r'[a-z]+'),
    'email': (('What is the email address of {name}?', 'Give the email of {name}.'),
              r'[a-z]+\.[a-z]+@[a-z]+\.example'),
    'id': (('What is the id of {name}?', 'Which id does the record of {name} have?'), r'\d{4,5}'),
}
_ARITH = re.compile(r'(\d{1,2}) ([-+*]) (\d{1,2}) = (-?\d+)')


def _docs(corpus: Path, domain: str, split: str) -> list[str]:
    p = corpus / domain / f'{split}.jsonl'
    if not p.is_file():
        raise UserError(f'{p} not found; build the corpus first (`make data` or `foundry-ext corpus --out {corpus}`)')
    return [json.loads(line)['text'] for line in p.read_text(encoding='utf-8').splitlines() if line.strip()]


def records(corpus: Path, split: str) -> Iterator[dict[str, str]]:
    for d in _docs(corpus, 'records', split):
        for block in d.split('\n\n'):
            fields = dict(line.split(': ', 1) for line in block.strip().splitlines() if ': ' in line)
            if {'name', 'born', 'age', 'city', 'occupation', 'email', 'id'} <= set(fields):
                yield fields


def sums(corpus: Path, split: str) -> Iterator[tuple[int, str, int, int]]:
    for d in _docs(corpus, 'arithmetic', split):
        for line in d.splitlines():
            m = _ARITH.fullmatch(line.strip())
            if m:
                a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
                if (op == '-' and a < b) or (op == '*' and b > 12):
                    continue
                yield a, op, b, c


def _record_text(r: dict[str, str]) -> str:
    return '\n'.join(f'{k}: {r[k]}' for k in ('id', 'name', 'born', 'age', 'city', 'occupation', 'email'))


def _field_qa(r: dict[str, str], rng: random.Random, avoid: Optional[str] = None) -> tuple[str, str, str, str]:
    field = rng.choice([f for f in _FIELD_QUESTIONS if f != avoid])
    qs, fmt = _FIELD_QUESTIONS[field]
    return field, rng.choice(qs).format(name=r['name']), r[field], fmt


def _word_problem(a: int, op: str, b: int, rng: random.Random) -> str:
    name, things = rng.choice(_NAMES), rng.choice(_THINGS)
    if rng.random() < 0.2:
        return f'What is {a} {op} {b}?'
    if op == '+':
        return f'{name} has {a} {things} and gets {b} more. How many {things} does {name} have now?'
    if op == '-':
        return f'{name} has {a} {things} and gives {b} away. How many {things} are left?'
    return f'{name} buys {a} bags with {b} {things} in each bag. How many {things} is that in total?'


def _system(rng: random.Random) -> list[dict[str, str]]:
    return [{'role': 'system', 'content': rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.5 else []


def build(corpus: str | Path, seed: int = 17, n_train: int = 3000, n_heldout: int = 200) -> dict[str, list[dict]]:
    """{'train': [...], 'heldout': [...]}: each item {task, messages (prompt only), answer, format,
    and for multi-turn training rows, turns: [(messages, answer), ...]}."""
    corpus = Path(corpus)
    out: dict[str, list[dict]] = {'train': [], 'heldout': []}
    held_sums = list(dict.fromkeys(s[:3] for s in sums(corpus, 'val')))
    held_set = set(held_sums)
    for split, n in (('heldout', n_heldout), ('train', n_train)):
        rng = random.Random(f'{seed}:{split}')
        recs = list(records(corpus, 'val' if split == 'heldout' else 'train'))
        if split == 'heldout':
            probs = held_sums
        else:
            probs = list(dict.fromkeys(s[:3] for s in sums(corpus, 'train') if s[:3] not in held_set))
        rng.shuffle(recs)
        rng.shuffle(probs)
        half = n // 2
        if len(recs) < min(half, 10) or len(probs) < min(n - half, 10):
            raise UserError(f'corpus {corpus} has too few {"val" if split == "heldout" else "train"} records '
                            f'({len(recs)}) or sums ({len(probs)}) for {n} {split} examples; build a larger corpus '
                            '(--size_mb) or ask for fewer')
        for i in range(half):
            r = recs[i % len(recs)]
            sysmsg = _system(rng)
            field, q, ans, fmt = _field_qa(r, rng)
            msgs = sysmsg + [{'role': 'user', 'content': f'{_record_text(r)}\n\n{q}'}]
            item: dict[str, Any] = {'task': 'record_field', 'messages': msgs, 'answer': ans, 'format': fmt}
            if split == 'train' and rng.random() < 0.25:
                _, q2, ans2, _ = _field_qa(r, rng, avoid=field)
                item['follow_up'] = (q2, ans2)
            out[split].append(item)
        for i in range(n - half):
            a, op, b = probs[i % len(probs)]
            c = a + b if op == '+' else a - b if op == '-' else a * b
            msgs = _system(rng) + [{'role': 'user', 'content': _word_problem(a, op, b, rng)}]
            out[split].append({'task': 'word_problem', 'messages': msgs, 'answer': str(c), 'format': r'-?\d+'})
        random.Random(f'{seed}:{split}:order').shuffle(out[split])
    return out


def sft_row(item: dict, style: str) -> dict:
    """An SFT row (chat messages with the answers, or prompt/response) for one item."""
    msgs = item['messages'] + [{'role': 'assistant', 'content': item['answer']}]
    if 'follow_up' in item:
        q2, a2 = item['follow_up']
        msgs += [{'role': 'user', 'content': q2}, {'role': 'assistant', 'content': a2}]
    if style == 'chat':
        return {'messages': msgs}
    return {'prompt': plain_prompt(item['messages']), 'response': f' {item["answer"]}'}


def plain_prompt(messages: list[dict[str, str]]) -> str:
    """The prompt of a prompt/response row: system and user text, then ``Answer:``."""
    return '\n'.join(m['content'] for m in messages) + '\nAnswer:'


def end_of_turn(tokenizer: Any, template: Any) -> str:
    """The text the template writes after an assistant answer (its end-of-turn marker), stripped."""
    from foundry_ext.prep.sft_examples import render
    msgs = [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': 'ANSWER_END'}]
    full = render(tokenizer, template, msgs, False, 'end-of-turn probe')
    return full[full.rindex('ANSWER_END') + len('ANSWER_END'):].strip()


def write(corpus: str | Path, out: str | Path, tokenizer_dir: Optional[str] = None, chat_template: Optional[str] = None,
          seed: int = 17, n_train: int = 3000, n_heldout: int = 200, style: str = 'chat',
          overwrite: bool = False) -> dict:
    """Write the instruction set (module docstring); returns the manifest."""
    if style not in ('chat', 'prompt_response'):
        raise UserError(f'--style must be chat or prompt_response, got {style!r}')
    if n_train < 2 or n_heldout < 2:
        raise UserError('--n_train and --n_heldout must be >= 2')
    if style == 'chat' and not tokenizer_dir:
        raise UserError('sft-data --style chat needs --tokenizer (the held-out prompts are rendered with its chat '
                        'template, else ChatML)')
    items = build(corpus, seed, n_train, n_heldout)
    tok, template, eot = None, None, ''
    if style == 'chat':
        from foundry_ext.prep.finetuning import load_chat_tokenizer
        tok, template = load_chat_tokenizer(tokenizer_dir, chat_template)  # type: ignore[arg-type]
        eot = end_of_turn(tok, template)
    stops = [s for s in (eot, '\n') if s]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        _jsonl(tmp / 'train.jsonl', [sft_row(it, style) for it in items['train']])
        _jsonl(tmp / 'val.jsonl', [sft_row(it, style) for it in items['heldout']])
        held = []
        for it in items['heldout']:
            ctx = (plain_prompt(it['messages']) if tok is None else
                   _render_prompt(tok, template, it['messages']))
            held.append({'task': it['task'], 'messages': it['messages'], 'context': ctx, 'answer': it['answer'],
                         'format': it['format']})
        _jsonl(tmp / 'heldout.jsonl', held)
        (tmp / 'gauntlet').mkdir()
        for task in TASKS:
            _jsonl(tmp / 'gauntlet' / f'sft_{task}.jsonl',
                   [{'context': h['context'], 'answer': h['answer'], 'aliases': [h['answer']]}
                    for h in held if h['task'] == task])
        (tmp / 'gauntlet' / 'tasks.yaml').write_text(_tasks_yaml(Path(out) / 'gauntlet', stops))
        (tmp / 'gauntlet' / 'gauntlet.yaml').write_text(_GAUNTLET)
        manifest = {'seed': seed, 'corpus': str(corpus), 'style': style, 'tokenizer': tokenizer_dir,
                    'chat_template': template.name if template else None, 'end_of_turn': eot, 'stops': stops,
                    'counts': {s: _counts(items[s]) for s in items},
                    'sha256': {p.relative_to(tmp).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                               for p in sorted(tmp.rglob('*')) if p.is_file()}}
        (tmp / 'manifest.json').write_text(json.dumps(manifest, indent=1) + '\n')
    return manifest


def _render_prompt(tok: Any, template: Any, messages: list[dict[str, str]]) -> str:
    from foundry_ext.prep.sft_examples import render
    return render(tok, template, messages, True, 'held-out prompt')


def _counts(items: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[it['task']] = out.get(it['task'], 0) + 1
    out['multi_turn'] = sum('follow_up' in it for it in items)
    return out


def _jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, 'w', encoding='utf-8') as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + '\n')


def _tasks_yaml(folder: Path, stops: list[str]) -> str:
    lines = ['# Held-out instruction tasks (foundry-ext sft-data): greedy output cut at the end-of-turn marker',
             '# or a newline, then exact (prefix) match after normalization, as LLM Foundry scores them.',
             'icl_tasks:']
    for task in TASKS:
        lines += [f'- label: sft_{task}', f'  dataset_uri: {folder / f"sft_{task}.jsonl"}',
                  '  icl_task_type: generation_task_with_answers', '  num_fewshot: [0]',
                  '  strip_dataset: false          # the context ends with the template\'s generation prompt',
                  "  continuation_delimiter: ''    # LLM Foundry's default ' ' would follow that prompt with a space",
                  f'  early_stopping_criteria: {json.dumps(stops)}',
                  '  generation_kwargs: {max_new_tokens: 24}']
    return '\n'.join(lines) + '\n'


_GAUNTLET = """# Held-out instruction following (foundry-ext sft-data): exact match, no random baseline.
eval_gauntlet:
  weighting: EQUAL
  subtract_random_baseline: true
  rescale_accuracy: true
  categories:
  - name: instructions
    benchmarks:
    - {name: sft_record_field, num_fewshot: 0, random_baseline: 0.0}
    - {name: sft_word_problem, num_fewshot: 0, random_baseline: 0.0}
  averages:
    instruction_average: [instructions]
"""
