"""The offline starter gauntlet: ICL task files generated from the corpus's held-out split.

Nothing here is downloaded. Every task is built deterministically from
``<corpus>/<domain>/val.jsonl`` (documents the model never trained on) and a seeded
``random.Random``: same corpus + seed -> byte-identical files. Tasks:

====================  ============================  ===================================================
label                 type                          what
====================  ============================  ===================================================
arithmetic_lm         language_modeling             ``12 + 7 =`` -> `` 19`` (held-out sums, 3-shot)
arithmetic_gen        generation_task_with_answers  ``12 + 7 =`` -> greedy output, cut at the first
                                                    newline, starts with ``19`` (distinct held-out
                                                    sums, 3-shot)
records_field_mc      multiple_choice               a held-out record cut after ``<field>:`` -> its value
                                                    vs 3 others
records_field_schema  schema                        which field name (true / another) fits the value
code_next_word        language_modeling             next word after a space inside a line of held-out code
code_mc               multiple_choice               true next line of code vs 3 lines from elsewhere
prose_cloze           language_modeling             LAMBADA-style: last word of a held-out passage
prose_mc              multiple_choice               true continuation vs 3 continuations from elsewhere
====================  ============================  ===================================================

``eval/starter/gauntlet.yaml`` (committed) groups them into categories; ``make eval-data``
writes the files to ``data/eval/starter/``.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Iterator

from foundry_ext.atomic import atomic_dir
from foundry_ext.errors import UserError

TASKS = ('arithmetic_lm', 'arithmetic_gen', 'records_field_mc', 'records_field_schema', 'code_next_word',
         'code_mc', 'prose_cloze', 'prose_mc')


def _docs(corpus: Path, domain: str) -> list[str]:
    p = corpus / domain / 'val.jsonl'
    if not p.is_file():
        raise UserError(f'{p} not found; build the corpus first (`make data` or '
                        '`python -m foundry_ext corpus --out data/corpus`)')
    return [json.loads(line)['text'] for line in p.read_text(encoding='utf-8').splitlines() if line.strip()]


def arithmetic_lm(corpus: Path, rng: random.Random, n: int) -> list[dict]:
    out = []
    for d in _docs(corpus, 'arithmetic'):
        for line in d.splitlines():
            m = re.fullmatch(r'(-?\d+) ([-+*]) (-?\d+) = (-?\d+)', line.strip())
            if m and len(m.group(1)) <= 2 and len(m.group(3)) <= 2 and m.group(2) in '+-':
                out.append({'context': f'{m.group(1)} {m.group(2)} {m.group(3)} =', 'continuation': m.group(4)})
    rng.shuffle(out)
    return out[:n]


def arithmetic_gen(corpus: Path, rng: random.Random, n: int) -> list[dict]:
    """Held-out sums (operands up to two digits) as free generation: each question once, so no
    few-shot example gives away the answer. LLM Foundry's format; the answer is also listed
    among the aliases, as in their files."""
    seen, out = set(), []
    for d in _docs(corpus, 'arithmetic'):
        for line in d.splitlines():
            m = re.fullmatch(r'(\d{1,2}) \+ (\d{1,2}) = (\d+)', line.strip())
            if m and (m.group(1), m.group(2)) not in seen:
                seen.add((m.group(1), m.group(2)))
                out.append({'context': f'{m.group(1)} + {m.group(2)} =', 'answer': m.group(3), 'aliases': [m.group(3)]})
    rng.shuffle(out)
    return out[:n]


def _records(corpus: Path) -> Iterator[dict]:
    for d in _docs(corpus, 'records'):
        for block in d.split('\n\n'):
            fields = dict(line.split(': ', 1) for line in block.strip().splitlines() if ': ' in line)
            if {'name', 'city', 'email'} <= set(fields):
                yield fields


def records_field_mc(corpus: Path, rng: random.Random, n: int) -> list[dict]:
    out = []
    for r in _records(corpus):
        keys = [k for k in r if k != 'id']
        i = rng.randrange(1, len(keys))
        head = '\n'.join(f'{k}: {r[k]}' for k in keys[:i]) + f'\n{keys[i]}:'
        choices = [r[keys[i]]] + [r[k] for k in rng.sample([k for k in keys if k != keys[i]], 3)]
        if len(set(choices)) < 4:
            continue
        rng.shuffle(choices)
        out.append({'query': head, 'choices': choices, 'gold': choices.index(r[keys[i]])})
    rng.shuffle(out)
    return out[:n]


def records_field_schema(corpus: Path, rng: random.Random, n: int) -> list[dict]:
    out = []
    for r in _records(corpus):
        keys = [k for k in r if k != 'id']
        i = rng.randrange(1, len(keys))
        wrong = rng.choice([k for k in keys if k != keys[i]])
        head = '\n'.join(f'{k}: {r[k]}' for k in keys[:i]) + '\n'
        opts = [keys[i], wrong]
        rng.shuffle(opts)
        out.append({'context_options': [f'{head}{k}:' for k in opts], 'continuation': r[keys[i]],
                    'gold': opts.index(keys[i])})
    rng.shuffle(out)
    return out[:n]


def code_next_word(corpus: Path, rng: random.Random, n: int, window: int = 240) -> list[dict]:
    out = []
    for d in _docs(corpus, 'code'):
        for m in re.finditer(r'(?<=[^\s] )([A-Za-z_][A-Za-z0-9_]*)', d):
            start = m.start(1)
            if start < window:
                continue
            ctx = d[start - window:start]
            ctx = ctx[ctx.find('\n') + 1:]  # start at a line boundary
            out.append({'context': ctx, 'continuation': m.group(1)})
    rng.shuffle(out)
    return out[:n]


def _passages(corpus: Path, domain: str, size: int) -> list[str]:
    out = []
    for d in _docs(corpus, domain):
        for i in range(0, len(d) - size, size):
            out.append(d[i:i + size])
    return out


def prose_cloze(corpus: Path, rng: random.Random, n: int, window: int = 300) -> list[dict]:
    out = []
    for d in _docs(corpus, 'prose'):
        for m in re.finditer(r'\b([A-Za-z]{4,})\b(?=[.,;:])', d):
            w, start = m.group(1), m.start()
            ctx = d[max(0, start - window):start]
            if start < window // 2 or not ctx.endswith(' ') or w not in ctx:
                continue
            out.append({'context': ctx.rstrip(' '), 'continuation': w})
    rng.shuffle(out)
    return out[:n]


def _mc(texts: list[str], rng: random.Random, n: int, ctx_chars: int, cont_chars: int) -> list[dict]:
    cands = []
    for t in texts:
        cut = t.rfind(' ', 0, ctx_chars)
        if cut < ctx_chars // 2:
            continue
        cont = t[cut + 1:cut + 1 + cont_chars]
        cont = cont[:cont.rfind(' ')] if ' ' in cont else cont
        if len(cont.strip()) >= 8:
            cands.append((t[:cut], cont.strip()))
    rng.shuffle(cands)
    out = []
    for i, (ctx, cont) in enumerate(cands[:n]):
        others = rng.sample([c for j, (_, c) in enumerate(cands) if j != i and c != cont], 3)
        choices = others + [cont]
        rng.shuffle(choices)
        out.append({'query': ctx, 'choices': choices, 'gold': choices.index(cont)})
    return out


def code_mc(corpus: Path, rng: random.Random, n: int) -> list[dict]:
    return _mc(_passages(corpus, 'code', 260), rng, n, 200, 50)


def prose_mc(corpus: Path, rng: random.Random, n: int) -> list[dict]:
    return _mc(_passages(corpus, 'prose', 260), rng, n, 200, 50)


def generate(corpus: str | Path, out: str | Path, seed: int = 17, n: int = 250, overwrite: bool = True) -> dict:
    """Write one ``<task>.jsonl`` per task to ``out``; returns {task: examples}."""
    corpus = Path(corpus)
    counts = {}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for name in TASKS:
            rows = globals()[name](corpus, random.Random(f'{seed}:{name}'), n)
            if len(rows) < 10:
                raise UserError(f'starter task {name}: only {len(rows)} examples from {corpus}; '
                                'build a larger corpus (--size_mb)')
            with open(tmp / f'{name}.jsonl', 'w', encoding='utf-8') as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + '\n')
            counts[name] = len(rows)
        (tmp / 'manifest.json').write_text(json.dumps({'seed': seed, 'corpus': str(corpus), 'tasks': counts},
                                                      indent=1))
    return counts
