"""Run a gauntlet on one loaded model: tasks -> items -> scores (cached) -> composite + intervals.

Used by ``scripts/eval.py`` and by the in-training callback. No Composer import. A task that
cannot run (missing file, bad line, unknown type, too few examples for its shots) becomes one
error line in the results; the other tasks still run. In a distributed run the examples of each
task are split over the ranks (:mod:`foundry_ext.gauntlet.shard`) and every rank ends with the
same full results; rank 0 alone logs and writes the cache.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from foundry_ext.errors import UserError
from foundry_ext.gauntlet import composite as comp
from foundry_ext.gauntlet.models import LoadedModel
from foundry_ext.gauntlet.prompts import build_items, needs_prefix_space
from foundry_ext.gauntlet.scoring import generation_correct, greedy_generate, score_items
from foundry_ext.gauntlet.shard import Shard
from foundry_ext.gauntlet.tasks import TaskSpec, check_fewshot, load_examples, task_from_cfg


def parse_tasks(raw: list, base_dir=None) -> tuple[list[TaskSpec], list[str]]:
    tasks, errors = [], []
    for entry in raw:
        try:
            tasks.append(task_from_cfg(entry, base_dir))
        except UserError as e:
            errors.append(str(e))
    labels = [t.label for t in tasks]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise UserError(f'icl task labels must be unique; repeated: {", ".join(dup)}')
    return tasks, errors


class ResultCache:
    """Per-example results keyed by (model hash, task content hash incl. shot and max_seq_len)."""

    def __init__(self, root: Optional[str | os.PathLike]):
        self.root = Path(root) if root else None

    def _path(self, model_hash: str, label: str, shot: int, key: str) -> Optional[Path]:
        return self.root / model_hash / f'{label}-{shot}shot-{key}.json' if self.root else None

    def get(self, model_hash, label, shot, key) -> Optional[list[int]]:
        p = self._path(model_hash, label, shot, key)
        if p is None or not p.is_file():
            return None
        try:
            return [int(c) for c in json.loads(p.read_text())['correct']]
        except (ValueError, KeyError, OSError):
            return None

    def put(self, model_hash, label, shot, key, correct: list[int]) -> None:
        p = self._path(model_hash, label, shot, key)
        if p is None:
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f'.tmp{os.getpid()}')
        tmp.write_text(json.dumps({'correct': ''.join(str(c) for c in correct)}))
        os.replace(tmp, p)


def score_task(lm: LoadedModel, task: TaskSpec, examples: list[dict], shot: int, max_seq_len: int,
               max_rows: int = 64, max_tokens: int = 16384, use_kv_cache: bool = True,
               shard: Optional[Shard] = None) -> list[int]:
    """Per-example 0/1 correctness of ``task`` at ``shot`` shots (this rank scores its share)."""
    items = build_items(task, examples, lm.tokenizer, shot, max_seq_len)
    shard = shard or Shard()
    if not shard.active:
        return _score(lm, task, items, max_rows, max_tokens, use_kv_cache)
    sizes = [sum(len(c) + len(x) for c, x in zip(it.contexts, it.continuations)) + it.max_new_tokens for it in items]
    # Choice and generation tasks batch questions by context length (shared-context KV cache, unpadded
    # decoding): keep those groups on one rank. LM tasks batch by total length.
    keys = sizes if task.icl_task_type == 'language_modeling' else [len(it.contexts[0]) for it in items]
    mine = shard.assign(sizes, keys)
    step = None
    if shard.lockstep:
        plain = lm  # the dummy call must not go through the counting wrapper
        step = shard.in_lockstep(lambda: _dummy_forward(plain), lm.device)
        lm = dataclasses.replace(lm, forward=step.wrap(lm.forward), forward_cached=step.wrap(lm.forward_cached))
    correct = _score(lm, task, [items[i] for i in mine], max_rows, max_tokens, use_kv_cache)
    if step is not None:
        step.drain()
    return shard.gather(mine, correct, len(items))


def _dummy_forward(lm: LoadedModel) -> None:
    import torch
    ids = torch.zeros((1, 1), dtype=torch.long, device=lm.device)
    with torch.no_grad():
        lm.forward(ids, torch.ones_like(ids, dtype=torch.bool))


def _score(lm: LoadedModel, task: TaskSpec, items: list, max_rows: int, max_tokens: int,
           use_kv_cache: bool) -> list[int]:
    if not items:
        return []
    rows = task.batch_size or max_rows
    if task.icl_task_type == 'generation_task_with_answers':
        tok = lm.tokenizer
        stops = task.early_stopping_criteria

        def stop_fn(ids):
            return bool(stops) and any(s in tok.decode(ids[-8:]) for s in stops)

        outs = greedy_generate(lm.forward, [it.contexts[0] for it in items], items[0].max_new_tokens,
                               tok.eos_token_id, lm.device, rows, stop_fn,
                               lm.forward_cached if use_kv_cache else None)
        texts = tok.batch_decode(outs, skip_special_tokens=True)
        if not needs_prefix_space(tok):  # as Composer's eval_forward, for SentencePiece-style tokenizers
            texts = [' ' + x for x in texts]
        return [int(generation_correct(t, it.aliases, stops, task.cot_delimiter, task.do_normalization))
                for t, it in zip(texts, items)]
    res = score_items(lm.forward, items, task.icl_task_type, lm.pad_id, lm.device, rows, max_tokens,
                      lm.forward_cached if use_kv_cache else None)
    return [r['correct'] for r in res]


def run_gauntlet(lm: LoadedModel, tasks: list[TaskSpec], gauntlet: Optional[comp.Gauntlet] = None,
                 max_seq_len: Optional[int] = None, max_rows: int = 64, max_tokens: int = 16384,
                 cache_dir=None, bootstrap_samples: int = 1000, seed: int = 17, level: float = 0.95,
                 errors: Optional[list[str]] = None, log: Callable[[str], None] = print,
                 use_kv_cache: bool = True, shard: Optional[Shard] = None) -> dict[str, Any]:
    """Score every (task, shot), then the composite and intervals. Returns the results dict.

    ``shard``: how examples are split over ranks; by default the initialized process group, if any
    (pass ``Shard.detect(lockstep=True)`` when the model is FSDP-sharded).
    """
    errors = list(errors or [])
    shard = shard or Shard.detect()
    if shard.rank != 0:
        log = _silent
    msl = int(max_seq_len or lm.max_seq_len)
    cache = ResultCache(cache_dir)
    benches: dict[str, dict] = {}
    correct: dict[str, np.ndarray] = {}
    t_all = time.perf_counter()
    for task in tasks:
        try:
            examples = load_examples(task)
        except UserError as e:
            errors.append(str(e))
            continue
        for shot in task.num_fewshot:
            k = comp.bench_key(task.label, shot)
            try:
                check_fewshot(task, shot, len(examples))
                task_msl = int(task.max_seq_len or msl)  # an icl_tasks entry may set its own, as in LLM Foundry
                key = task.key(shot, task_msl)
                t0 = time.perf_counter()
                # Rank 0 decides (other nodes may not see its cache folder).
                c = shard.broadcast(cache.get(lm.model_hash, task.label, shot, key) if shard.rank == 0 else None)
                cached = c is not None and len(c) == len(examples)
                if not cached:
                    c = score_task(lm, task, examples, shot, task_msl, max_rows, max_tokens, use_kv_cache, shard)
                    if shard.rank == 0:
                        cache.put(lm.model_hash, task.label, shot, key, c)
            except UserError as e:
                errors.append(str(e))
                continue
            dt = time.perf_counter() - t0
            correct[k] = np.asarray(c, dtype=np.int8)
            benches[k] = {'label': task.label, 'num_fewshot': shot, 'icl_task_type': task.icl_task_type,
                          'max_seq_len': task_msl,
                          'n': len(c), 'accuracy': float(np.mean(c)), 'cached': cached, 'seconds': round(dt, 3),
                          'correct': ''.join(str(int(x)) for x in c)}
            log(f'{k:<32} acc {benches[k]["accuracy"]:.4f}  n={len(c):<5} '
                f'{"(cached)" if cached else f"{dt:.1f}s"}')
    out: dict[str, Any] = {'model': {'name': lm.name, 'hash': lm.model_hash}, 'max_seq_len': msl,
                           'world_size': shard.world,
                           'benchmarks': benches, 'categories': {}, 'averages': {}, 'errors': errors}
    if gauntlet is not None:
        g, errs = comp.check_benchmarks(gauntlet, set(benches) | _declared(tasks))
        out['errors'] += errs
        sizes = {k: b['n'] for k, b in benches.items()}
        scores = comp.composite(g, {k: b['accuracy'] for k, b in benches.items()}, sizes)
        for c in g.categories:
            failed = [comp.bench_key(b['name'], b['num_fewshot']) for b in c['benchmarks']
                      if comp.bench_key(b['name'], b['num_fewshot']) not in benches]
            if failed:
                out['errors'].append(f"eval_gauntlet category '{c['name']}' is left out: benchmark(s) "
                                     f"{', '.join(failed)} did not run (see the errors above)")
        cis = comp.bootstrap(g, correct, bootstrap_samples, seed, level) if bootstrap_samples else None
        for part in ('categories', 'averages'):
            for name, v in scores[part].items():
                out[part][name] = {'score': float(v), 'ci': list(cis[part].get(name, (None, None))) if cis else None}
        baselines = {comp.bench_key(b['name'], b['num_fewshot']): float(b.get('random_baseline', 0.0))
                     for c in g.categories for b in c['benchmarks']}
        for k, b in benches.items():
            b['random_baseline'] = baselines.get(k)
    elif bootstrap_samples:
        cis = comp.bootstrap(None, correct, bootstrap_samples, seed, level)
    for k, b in benches.items():
        b['ci'] = list(cis['benchmarks'][k]) if bootstrap_samples else None
    out['bootstrap'] = {'samples': bootstrap_samples, 'level': level, 'seed': seed}
    out['seconds'] = round(time.perf_counter() - t_all, 3)
    return out


def _silent(_msg: str) -> None:
    pass


def _declared(tasks: list[TaskSpec]) -> set[str]:
    return {comp.bench_key(t.label, s) for t in tasks for s in t.num_fewshot}


def correctness(results: dict) -> dict[str, np.ndarray]:
    return {k: np.array([int(c) for c in b['correct']], dtype=np.int8) for k, b in results['benchmarks'].items()}


def compare(a: dict, b: dict, gauntlet: Optional[comp.Gauntlet], samples: int = 1000, seed: int = 17,
            level: float = 0.95) -> dict[str, Any]:
    """Side-by-side of two results dicts: each score, difference a - b, and its paired interval."""
    ca, cb = correctness(a), correctness(b)
    common = sorted(set(ca) & set(cb))
    ca = {k: ca[k] for k in common if len(ca[k]) == len(cb[k])}
    cb = {k: cb[k] for k in ca}
    g = comp.check_benchmarks(gauntlet, set(ca))[0] if gauntlet is not None else None
    cis = comp.bootstrap(g, ca, samples, seed, level, other=cb) if samples else None
    rows = []
    for k in ca:
        sa, sb = a['benchmarks'][k]['accuracy'], b['benchmarks'][k]['accuracy']
        rows.append({'name': k, 'kind': 'benchmark', 'a': sa, 'b': sb, 'diff': sa - sb,
                     'ci': list(cis['benchmarks'][k]) if cis else None})
    if g is not None:
        for part, kind in (('categories', 'category'), ('averages', 'average')):
            for name in a.get(part, {}):
                if name in b.get(part, {}) and cis and name in cis[part]:
                    sa, sb = a[part][name]['score'], b[part][name]['score']
                    rows.append({'name': name, 'kind': kind, 'a': sa, 'b': sb, 'diff': sa - sb,
                                 'ci': list(cis[part][name])})
    return {'a': a['model'], 'b': b['model'], 'rows': rows}
