"""LLM Foundry ``eval_gauntlet`` composite scores, and bootstrap confidence intervals for them.

The arithmetic is LLM Foundry 0.22's ``EvalGauntlet`` callback: per benchmark
``(acc - random_baseline) / (1 - random_baseline)`` (when subtract_random_baseline /
rescale_accuracy), a weighted mean per category (EQUAL, SAMPLE_SZ or LOG_SAMPLE_SZ =
max(log2 n, 1)), and named averages = plain means of category scores. Intervals come from a
stratified bootstrap over examples (each benchmark resampled independently, the same
resample pushed through the composite); comparisons resample the same examples for both models.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from foundry_ext.errors import UserError

WEIGHTINGS = ('EQUAL', 'SAMPLE_SZ', 'LOG_SAMPLE_SZ')


def bench_key(name: str, shot: int) -> str:
    return f'{name}/{shot}-shot'


@dataclass
class Gauntlet:
    categories: list[dict]
    weighting: str = 'EQUAL'
    subtract_random_baseline: bool = True
    rescale_accuracy: bool = True
    averages: dict[str, list[str]] = field(default_factory=dict)


def parse_gauntlet(cfg: Any) -> Gauntlet:
    """An ``eval_gauntlet`` mapping, or a path to a yaml holding one (LLM Foundry's format)."""
    if isinstance(cfg, (str, Path)):
        from omegaconf import OmegaConf as om
        p = Path(cfg)
        if not p.is_file():
            raise UserError(f'eval_gauntlet file {p} not found')
        cfg = om.to_container(om.load(p), resolve=True)
        cfg = cfg.get('eval_gauntlet', cfg) if isinstance(cfg, dict) else cfg
    if not isinstance(cfg, dict) or not isinstance(cfg.get('categories'), list):
        raise UserError('eval_gauntlet must be a mapping with a list of categories')
    w = str(cfg.get('weighting', 'EQUAL')).upper()
    if w not in WEIGHTINGS:
        raise UserError(f"eval_gauntlet.weighting {cfg.get('weighting')!r} is unknown; "
                        f"use one of {', '.join(WEIGHTINGS)}")
    sub = bool(cfg.get('subtract_random_baseline', True))
    resc = bool(cfg.get('rescale_accuracy', True))
    if resc and not sub:
        raise UserError('eval_gauntlet: rescale_accuracy needs subtract_random_baseline: true')
    cats = []
    for c in cfg['categories']:
        if not isinstance(c, dict) or 'name' not in c or not isinstance(c.get('benchmarks'), list):
            raise UserError(f'eval_gauntlet: a category needs a name and a list of benchmarks: {c!r}')
        for b in c['benchmarks']:
            if not isinstance(b, dict) or 'name' not in b or 'num_fewshot' not in b:
                raise UserError(f"eval_gauntlet category '{c['name']}': a benchmark needs name and num_fewshot: {b!r}")
            rb = float(b.get('random_baseline', 0.0))
            if not 0.0 <= rb < 1.0:
                raise UserError(f"eval_gauntlet benchmark '{b['name']}': random_baseline must be in [0, 1), got {rb}")
        cats.append(c)
    names = [c['name'] for c in cats]
    averages = cfg.get('averages') or {'default_average': names}
    for a, lst in averages.items():
        if a in names:
            raise UserError(f"eval_gauntlet: average name '{a}' is also a category name")
        unknown = [x for x in lst if x not in names]
        if unknown:
            raise UserError(f"eval_gauntlet: average '{a}' names unknown categories {unknown}")
    return Gauntlet(cats, w, sub, resc, dict(averages))


def check_benchmarks(g: Gauntlet, available: set[str]) -> tuple[Gauntlet, list[str]]:
    """Drop categories that name a benchmark (label/shot) not among the tasks; one error line each."""
    errors, keep = [], []
    for c in g.categories:
        bad = [bench_key(b['name'], b['num_fewshot']) for b in c['benchmarks']
               if bench_key(b['name'], b['num_fewshot']) not in available]
        if bad:
            errors.append(f"eval_gauntlet category '{c['name']}' names benchmark(s) {', '.join(bad)} that no "
                          'icl task provides; the category is left out')
        else:
            keep.append(c)
    names = {c['name'] for c in keep}
    avgs = {a: [x for x in lst if x in names] for a, lst in g.averages.items()}
    return Gauntlet(keep, g.weighting, g.subtract_random_baseline, g.rescale_accuracy, avgs), errors


def _weight(g: Gauntlet, n: int) -> float:
    if g.weighting == 'EQUAL':
        return 1.0
    n = max(n, 1)
    return float(n) if g.weighting == 'SAMPLE_SZ' else max(math.log2(n), 1.0)


def composite(g: Gauntlet, acc: dict[str, Any], sizes: dict[str, int]) -> dict[str, Any]:
    """Category scores and named averages from per-benchmark accuracies (floats or numpy arrays of
    bootstrap replicates). A category with a missing benchmark is left out, as in LLM Foundry."""
    cats: dict[str, Any] = {}
    for c in g.categories:
        parts = []
        for b in c['benchmarks']:
            k = bench_key(b['name'], b['num_fewshot'])
            if k not in acc:
                parts = None
                break
            s = acc[k]
            rb = float(b.get('random_baseline', 0.0))
            if g.subtract_random_baseline:
                s = s - rb
            if g.rescale_accuracy and g.subtract_random_baseline:
                s = s / (1.0 - rb)
            parts.append((s, _weight(g, sizes.get(k, 0))))
        if not parts:
            continue
        tw = sum(w for _, w in parts)
        cats[c['name']] = sum(s * (w / tw) for s, w in parts)
    avgs = {}
    for a, lst in g.averages.items():
        sub = [cats[x] for x in lst if x in cats]
        avgs[a] = sum(sub) / len(sub) if sub else 0.0
    return {'categories': cats, 'averages': avgs}


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def bootstrap_indices(n: int, key: str, samples: int, seed: int) -> np.ndarray:
    """(samples, n) resample indices for one benchmark; depends only on (seed, key, n)."""
    return _rng(seed, key).integers(0, n, size=(samples, n))


def _ci(x: np.ndarray, level: float) -> tuple[float, float]:
    a = (1.0 - level) / 2
    return float(np.quantile(x, a)), float(np.quantile(x, 1 - a))


def bootstrap(g: Optional[Gauntlet], correct: dict[str, np.ndarray], samples: int = 1000, seed: int = 0,
              level: float = 0.95, other: Optional[dict[str, np.ndarray]] = None) -> dict[str, dict[str, tuple]]:
    """Percentile intervals for every benchmark, category and average.

    With ``other`` (the second model's per-example correctness on the same examples) the intervals
    are for the difference ``correct - other``, resampling the same examples for both (paired).
    """
    reps, reps_o = {}, {}
    for k, x in correct.items():
        x = np.asarray(x, dtype=np.float64)
        if other is not None and len(np.asarray(other[k])) != len(x):
            raise UserError(f'cannot compare {k}: the two results have {len(x)} and {len(other[k])} examples')
        idx = bootstrap_indices(len(x), k, samples, seed)
        reps[k] = x[idx].mean(1)
        if other is not None:
            reps_o[k] = np.asarray(other[k], dtype=np.float64)[idx].mean(1)
    out: dict[str, dict[str, tuple]] = {'benchmarks': {}, 'categories': {}, 'averages': {}}
    for k in reps:
        out['benchmarks'][k] = _ci(reps[k] - reps_o[k] if other is not None else reps[k], level)
    if g is not None:
        sizes = {k: len(v) for k, v in correct.items()}
        comp = composite(g, reps, sizes)
        comp_o = composite(g, reps_o, sizes) if other is not None else None
        for part in ('categories', 'averages'):
            for name, v in comp[part].items():
                v = np.asarray(v) if not np.isscalar(v) else np.full(samples, v)
                if comp_o is not None:
                    vo = comp_o[part][name]
                    v = v - (np.asarray(vo) if not np.isscalar(vo) else vo)
                out[part][name] = _ci(v, level)
    return out
