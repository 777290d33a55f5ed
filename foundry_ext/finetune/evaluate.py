"""`foundry-ext sft-eval`: held-out exact match and format-following of a model on ``sft-data``'s questions.

    foundry-ext sft-eval --model runs/demo-sft --data data/sft --compare runs/demo

For every held-out question (``<data>/heldout.jsonl``; the prompt as the chat template renders
it, the same text as the gauntlet tasks in ``<data>/gauntlet/``) the model decodes greedily until
it ends its turn (the template's end-of-turn marker, or EOS) or ``max_new_tokens``:

* ``exact_match``: the gauntlet's (LLM Foundry's) metric: the output cut at the first stop string,
  normalized, starts with the answer;
* ``format``: the model ended its turn and what it wrote before is one answer of the asked-for
  shape (a number for word problems, a year, an e-mail address ...) and nothing else;
* ``strict``: format-following and exactly the answer.

``--model`` is a run folder (its latest checkpoint), a Composer ``.pt`` or an HF model folder.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from foundry_ext.errors import UserError
from foundry_ext.gauntlet.config import ModelSpec


def model_spec(path: str) -> ModelSpec:
    p = Path(path)
    if p.is_file() and p.suffix == '.pt':
        return ModelSpec(checkpoint=str(p))
    if (p / 'config.json').is_file():
        return ModelSpec(hf_path=str(p))
    if (p / 'checkpoints').is_dir():
        return ModelSpec(run_dir=str(p))
    raise UserError(f'--model {path}: not a run folder (with checkpoints/), a Composer .pt or an HF model folder')


def load_heldout(data: str | Path, limit: Optional[int] = None) -> tuple[list[dict], dict]:
    data = Path(data)
    p, m = data / 'heldout.jsonl', data / 'manifest.json'
    if not p.is_file() or not m.is_file():
        raise UserError(f'{data} has no heldout.jsonl / manifest.json; run `foundry-ext sft-data --out {data}`')
    rows = [json.loads(line) for line in p.read_text(encoding='utf-8').splitlines() if line.strip()]
    return rows[:limit] if limit else rows, json.loads(m.read_text())


def score(outputs: list[str], stopped: list[bool], rows: list[dict], stops: list[str]) -> dict[str, Any]:
    """Per-task and overall exact_match / format / strict (pure; ``stopped``: the model ended its turn)."""
    from foundry_ext.gauntlet.scoring import generation_correct, normalize_answer
    eot = [s for s in stops if s != '\n']
    per: dict[str, dict[str, list[int]]] = {}
    for text, done, row in zip(outputs, stopped, rows):
        body = text
        for s in eot:
            if s in body:
                body = body[:body.index(s)]
        fmt = bool(done) and re.fullmatch(row['format'], body.strip()) is not None
        em = generation_correct(text, [row['answer']], stops)
        strict = fmt and normalize_answer(body) == normalize_answer(row['answer'])
        d = per.setdefault(row['task'], {'exact_match': [], 'format': [], 'strict': []})
        d['exact_match'].append(int(em))
        d['format'].append(int(fmt))
        d['strict'].append(int(strict))
    out: dict[str, Any] = {'tasks': {}, 'n': len(rows)}
    for task, d in sorted(per.items()):
        out['tasks'][task] = {k: sum(v) / len(v) for k, v in d.items()} | {'n': len(d['format'])}
    for k in ('exact_match', 'format', 'strict'):
        vals = [x for d in per.values() for x in d[k]]
        out[k] = sum(vals) / max(len(vals), 1)
    return out


def evaluate(model: str, data: str | Path, max_new_tokens: int = 24, limit: Optional[int] = None,
             device: Optional[str] = None, batch_rows: int = 64) -> dict[str, Any]:
    from foundry_ext.gauntlet.generate import greedy_generate
    from foundry_ext.gauntlet.models import load_model
    rows, manifest = load_heldout(data, limit)
    stops = list(manifest.get('stops') or ['\n'])
    eot = [s for s in stops if s != '\n']
    lm = load_model(model_spec(model), device)
    tok = lm.tokenizer
    contexts = [tok(r['context'], add_special_tokens=False)['input_ids'] for r in rows]

    def stop_fn(ids: list[int]) -> bool:
        return bool(eot) and any(s in tok.decode(ids[-8:]) for s in eot)

    if lm.step is None:
        raise UserError(f'--model {model}: the loaded model has no generation step')
    outs = greedy_generate(lm.step, contexts, max_new_tokens, tok.eos_token_id, lm.pad_id, lm.device, batch_rows,
                           stop=stop_fn)
    texts = tok.batch_decode(outs, skip_special_tokens=False)
    # ended its turn: an end-of-turn marker, or EOS before the budget (greedy_generate drops the EOS)
    stopped = [any(s in t for s in eot) or len(o) < max_new_tokens for t, o in zip(texts, outs)]
    res = score(texts, stopped, rows, stops)
    res.update(model=str(model), data=str(data), max_new_tokens=max_new_tokens,
               examples=[{'context': r['context'][-80:], 'answer': r['answer'], 'output': t}
                         for r, t in list(zip(rows, texts))[:5]])
    return res


def table(results: list[dict[str, Any]]) -> str:
    tasks = sorted({t for r in results for t in r['tasks']})
    head = f"{'model':<36}{'task':<16}{'n':>5}{'exact_match':>13}{'format':>9}{'strict':>9}"
    lines = [head, '-' * len(head)]
    for r in results:
        for t in tasks + ['all']:
            d = r['tasks'].get(t) if t != 'all' else {**r, 'n': r['n']}
            if d is None:
                continue
            lines.append(f"{str(r['model'])[-35:]:<36}{t:<16}{d['n']:>5}{d['exact_match']:>13.3f}"
                         f"{d['format']:>9.3f}{d['strict']:>9.3f}")
    return '\n'.join(lines)
