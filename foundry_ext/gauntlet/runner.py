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
from typing import Callable, Optional

import numpy as np

from foundry_ext.errors import UserError
from foundry_ext.gauntlet import composite as comp
from foundry_ext.gauntlet.config import RunOptions
from foundry_ext.gauntlet.generate import StopStrings, greedy_generate
from foundry_ext.gauntlet.models import LoadedModel
from foundry_ext.gauntlet.prompts import Item, build_task_items, needs_prefix_space
from foundry_ext.gauntlet.results import BenchmarkResult, CompareRow, Comparison, GauntletResults, SubsetResult
from foundry_ext.gauntlet.scoring import generation_correct, score_items
from foundry_ext.gauntlet.shard import Shard
from foundry_ext.gauntlet.tasks import TaskSpec, load_examples, split_categories, task_from_cfg


def parse_tasks(raw: list, base_dir=None) -> tuple[list[TaskSpec], list[str]]:
    """``icl_tasks`` entries -> (tasks, one error line per entry that cannot run)."""
    tasks: list[TaskSpec] = []
    errors: list[str] = []
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

    def get(self, model_hash: str, label: str, shot: int, key: str) -> Optional[list[int]]:
        p = self._path(model_hash, label, shot, key)
        if p is None or not p.is_file():
            return None
        try:
            return [int(c) for c in json.loads(p.read_text())['correct']]
        except (ValueError, KeyError, OSError):
            return None

    def put(self, model_hash: str, label: str, shot: int, key: str, correct: list[int]) -> None:
        p = self._path(model_hash, label, shot, key)
        if p is None:
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f'.tmp{os.getpid()}')
        tmp.write_text(json.dumps({'correct': ''.join(str(c) for c in correct)}))
        os.replace(tmp, p)


def score_task(lm: LoadedModel, task: TaskSpec, examples: list[dict], shot: int, max_seq_len: int,
               opts: Optional[RunOptions] = None, shard: Optional[Shard] = None
               ) -> tuple[list[int], list[tuple[Optional[str], int]]]:
    """Per-example 0/1 correctness of ``task`` at ``shot`` shots (this rank scores its share, every
    rank gets all), and the ``[(category, n)]`` the examples come in (one ``(None, n)`` without
    ``has_categories``)."""
    opts = opts or RunOptions()
    items, groups = build_task_items(task, examples, lm.tokenizer, shot, max_seq_len)
    shard = shard or Shard()
    if not shard.active:
        return _score(lm, task, items, opts), groups
    sizes = [sum(len(c) + len(x) for c, x in zip(it.contexts, it.continuations)) + it.max_new_tokens for it in items]
    # Choice tasks batch questions by context length (shared-context KV cache, unpadded): keep those
    # groups on one rank. LM and generation tasks batch by total length (padded).
    keys = [len(it.contexts[0]) for it in items] if task.icl_task_type in ('multiple_choice', 'schema') else sizes
    mine = shard.assign(sizes, keys)
    step = None
    if shard.lockstep:
        plain = lm  # the dummy call must not go through the counting wrapper
        step = shard.in_lockstep(lambda: _dummy_forward(plain), lm.device)
        lm = dataclasses.replace(lm, forward=step.wrap(lm.forward) or lm.forward,
                                 forward_cached=step.wrap(lm.forward_cached), step=step.wrap(lm.step))
    correct = _score(lm, task, [items[i] for i in mine], opts)
    if step is not None:
        step.drain()
    return shard.gather(mine, correct, len(items)), groups


def _dummy_forward(lm: LoadedModel) -> None:
    import torch
    ids = torch.zeros((1, 1), dtype=torch.long, device=lm.device)
    with torch.no_grad():
        lm.forward(ids, torch.ones_like(ids, dtype=torch.bool))


def _score(lm: LoadedModel, task: TaskSpec, items: list[Item], opts: RunOptions) -> list[int]:
    if not items:
        return []
    rows = task.batch_size or opts.batch_rows
    if task.icl_task_type == 'generation_task_with_answers':
        return _generate_and_score(lm, task, items, rows, opts)
    res = score_items(lm.forward, items, task.icl_task_type, lm.pad_id, lm.device, rows, opts.max_tokens,
                      lm.forward_cached if opts.kv_cache else None)
    return [r['correct'] for r in res]


def _generate_and_score(lm: LoadedModel, task: TaskSpec, items: list[Item], rows: int, opts: RunOptions) -> list[int]:
    tok = lm.tokenizer
    stops = task.early_stopping_criteria
    if lm.step is None:
        raise UserError(f"icl task '{task.label}': the model has no generation step; load it with gauntlet.models.wrap")
    outs: list[list[int]] = [[] for _ in items]
    by_len: dict[int, list[int]] = {}  # categories of a has_categories task size max_new_tokens each
    for i, it in enumerate(items):
        by_len.setdefault(it.max_new_tokens, []).append(i)
    for max_new, idx in by_len.items():
        got = greedy_generate(lm.step, [items[i].contexts[0] for i in idx], max_new, tok.eos_token_id, lm.pad_id,
                              lm.device, rows, opts.max_tokens, StopStrings(stops, tok) or None, opts.kv_cache)
        for i, o in zip(idx, got):
            outs[i] = o
    texts = tok.batch_decode(outs, skip_special_tokens=True)
    if not needs_prefix_space(tok):  # as Composer's eval_forward, for SentencePiece-style tokenizers
        texts = [' ' + x for x in texts]
    return [int(generation_correct(t, it.aliases, stops, task.cot_delimiter, task.do_normalization))
            for t, it in zip(texts, items)]


def run_gauntlet(lm: LoadedModel, tasks: list[TaskSpec], gauntlet: Optional[comp.Gauntlet] = None,
                 opts: Optional[RunOptions] = None, *, errors: Optional[list[str]] = None,
                 log: Callable[[str], None] = print, shard: Optional[Shard] = None) -> GauntletResults:
    """Score every (task, shot), then the composite and intervals.

    ``errors``: lines from parsing the tasks, carried into the results. ``shard``: how examples are
    split over ranks; by default the initialized process group, if any (pass
    ``Shard.detect(lockstep=True)`` when the model is FSDP-sharded).
    """
    opts = opts or RunOptions()
    errors = list(errors or [])
    shard = shard or Shard.detect()
    if shard.rank != 0:
        log = _silent
    msl = int(opts.max_seq_len or lm.max_seq_len)
    cache = ResultCache(opts.cache_dir)
    benches: dict[str, BenchmarkResult] = {}
    why: dict[str, str] = {}
    t_all = time.perf_counter()
    for task in tasks:
        try:
            examples = load_examples(task)
        except UserError as e:
            errors.append(str(e))
            why.update({comp.bench_key(task.label, s): 'did not run (its task file failed)' for s in task.num_fewshot})
            continue
        for shot in task.num_fewshot:
            k = comp.bench_key(task.label, shot)
            try:
                b = _run_one(lm, task, examples, shot, msl, opts, cache, shard)
            except UserError as e:
                errors.append(str(e))
                why[k] = 'did not run (see its error)'
                continue
            benches[k] = b
            log(f'{k:<32} acc {b.accuracy:.4f}  n={b.n:<5} ' + ('(cached)' if b.cached else f'{b.seconds:.1f}s'))
    out = GauntletResults(model={'name': lm.name, 'hash': lm.model_hash}, max_seq_len=msl, world_size=shard.world,
                          benchmarks=benches, errors=errors)
    correct = out.correctness()
    n_boot = opts.bootstrap_samples
    cis = comp.bootstrap(gauntlet, correct, n_boot, opts.seed, opts.confidence_level) if n_boot else None
    if gauntlet is not None:
        declared = _declared(tasks)
        out.errors += comp.check_benchmarks(gauntlet, benches.keys() | declared)
        why.update({k: 'is not provided by any icl task' for c in gauntlet.categories for k in _keys(c)
                    if k not in declared})
        for c in gauntlet.categories:
            failed = [k for k in _keys(c) if k in declared and k not in benches]
            if failed:
                out.errors.append(f"eval_gauntlet category '{c['name']}' is left out: benchmark(s) "
                                  f"{', '.join(failed)} did not run (see the errors above)")
        out.categories, out.averages = comp.scores(gauntlet, {k: b.accuracy for k, b in benches.items()},
                                                   {k: b.n for k, b in benches.items()}, cis, why)
        baselines = {k: float(b.get('random_baseline', 0.0)) for c in gauntlet.categories
                     for k, b in zip(_keys(c), c['benchmarks'])}
        for k, b in benches.items():
            b.random_baseline = baselines.get(k)
    for k, b in benches.items():
        b.ci = list(cis['benchmarks'][k]) if cis else None
    out.bootstrap = {'samples': n_boot, 'level': opts.confidence_level, 'seed': opts.seed}
    out.seconds = round(time.perf_counter() - t_all, 3)
    return out


def _run_one(lm: LoadedModel, task: TaskSpec, examples: list[dict], shot: int, msl: int, opts: RunOptions,
             cache: ResultCache, shard: Shard) -> BenchmarkResult:
    task_msl = int(task.max_seq_len or msl)  # an icl_tasks entry may set its own, as in LLM Foundry
    key = task.key(shot, task_msl)
    t0 = time.perf_counter()
    # Rank 0 decides (other nodes may not see its cache folder).
    c = shard.broadcast(cache.get(lm.model_hash, task.label, shot, key) if shard.rank == 0 else None)
    cached = c is not None and len(c) == len(examples)
    if cached:
        groups = [(cat, len(exs)) for cat, exs in split_categories(task, examples)]
    else:
        c, groups = score_task(lm, task, examples, shot, task_msl, opts, shard)
        if shard.rank == 0:
            cache.put(lm.model_hash, task.label, shot, key, c)
    assert c is not None
    subsets, start = {}, 0
    for cat, n in groups:
        if cat is not None:
            subsets[cat] = SubsetResult(n, float(np.mean(c[start:start + n])))
        start += n
    acc = float(np.mean([s.accuracy for s in subsets.values()])) if subsets else float(np.mean(c))
    return BenchmarkResult(task.label, shot, task.icl_task_type, task_msl, len(c), acc, ''.join(str(int(x)) for x in c),
                           cached, round(time.perf_counter() - t0, 3), subsets=subsets)


def _silent(_msg: str) -> None:
    pass


def _keys(category: dict) -> list[str]:
    return [comp.bench_key(b['name'], b['num_fewshot']) for b in category['benchmarks']]


def _declared(tasks: list[TaskSpec]) -> set[str]:
    return {comp.bench_key(t.label, s) for t in tasks for s in t.num_fewshot}


def compare(a: GauntletResults, b: GauntletResults, gauntlet: Optional[comp.Gauntlet], samples: int = 1000,
            seed: int = 17, level: float = 0.95) -> Comparison:
    """Side-by-side of two results: each score, difference a - b, and its paired interval."""
    ca, cb = a.correctness(), b.correctness()
    common = [k for k in ca if k in cb and [len(x) for x in ca[k]] == [len(x) for x in cb[k]]]
    ca = {k: ca[k] for k in common}
    cb = {k: cb[k] for k in common}
    cis = comp.bootstrap(gauntlet, ca, samples, seed, level, other=cb) if samples else None
    rows = []
    for k in common:
        sa, sb = a.benchmarks[k].accuracy, b.benchmarks[k].accuracy
        rows.append(CompareRow(k, 'benchmark', sa, sb, sa - sb, list(cis['benchmarks'][k]) if cis else None))
    if gauntlet is not None and cis:
        for part, kind in (('categories', 'category'), ('averages', 'average')):
            pa, pb = getattr(a, part), getattr(b, part)
            for name, va in pa.items():
                vb = pb.get(name)
                if vb is None or va.score is None or vb.score is None or name not in cis[part]:
                    continue
                rows.append(CompareRow(name, kind, va.score, vb.score, va.score - vb.score, list(cis[part][name])))
    return Comparison(a.model, b.model, rows)
