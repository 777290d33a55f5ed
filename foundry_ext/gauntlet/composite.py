"""LLM Foundry ``eval_gauntlet`` composite scores, and bootstrap confidence intervals for them.

The arithmetic is LLM Foundry 0.22's ``EvalGauntlet`` callback: per benchmark
``(acc - random_baseline) / (1 - random_baseline)`` (when subtract_random_baseline /
rescale_accuracy), a weighted mean per category (EQUAL, SAMPLE_SZ or LOG_SAMPLE_SZ =
max(log2 n, 1)), and named averages = plain means of category scores. A ``has_categories`` task
enters as the unweighted mean of its categories' accuracies (its size for the weighting: all its
examples), as LLM Foundry's callback averages the ``<label>/<k>-shot/<category>`` dataloaders.
Where LLM Foundry silently drops a category with a missing benchmark and reports an average of
no categories as 0, :func:`scores` reports them as n/a with the reason.

Intervals come from a stratified bootstrap over examples (each benchmark, and each category of a
``has_categories`` task, resampled independently, the same resample pushed through the composite);
comparisons resample the same examples for both models.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from foundry_ext.errors import UserError
from foundry_ext.gauntlet.results import Score

# Per benchmark: one 0/1 array, or one per category of a has_categories task.
Correct = Union[np.ndarray, Sequence[np.ndarray]]

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
        if not c['benchmarks']:
            raise UserError(f"eval_gauntlet category '{c['name']}' lists no benchmarks; add some or remove it")
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


def check_benchmarks(g: Gauntlet, available: set[str]) -> list[str]:
    """One error line per category that names a benchmark (label/shot) no icl task provides."""
    errors = []
    for c in g.categories:
        bad = [bench_key(b['name'], b['num_fewshot']) for b in c['benchmarks']
               if bench_key(b['name'], b['num_fewshot']) not in available]
        if bad:
            errors.append(f"eval_gauntlet category '{c['name']}' names benchmark(s) {', '.join(bad)} that no "
                          'icl task provides; the category is left out')
    return errors


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
        parts: list[tuple[Any, float]] = []
        missing = False
        for b in c['benchmarks']:
            k = bench_key(b['name'], b['num_fewshot'])
            if k not in acc:
                missing = True
                break
            s = acc[k]
            rb = float(b.get('random_baseline', 0.0))
            if g.subtract_random_baseline:
                s = s - rb
            if g.rescale_accuracy and g.subtract_random_baseline:
                s = s / (1.0 - rb)
            parts.append((s, _weight(g, sizes.get(k, 0))))
        if missing or not parts:
            continue
        tw = sum(w for _, w in parts)
        cats[c['name']] = sum(s * (w / tw) for s, w in parts)
    avgs: dict[str, Any] = {}
    for a, lst in g.averages.items():
        sub = [cats[x] for x in lst if x in cats]
        avgs[a] = sum(sub) / len(sub) if sub else None  # LLM Foundry: 0, which reads like a score
    return {'categories': cats, 'averages': avgs}


def scores(g: Gauntlet, acc: dict[str, float], sizes: dict[str, int], cis: Optional[dict] = None,
           why: Optional[dict[str, str]] = None) -> tuple[dict[str, Score], dict[str, Score]]:
    """Every category and average of ``g`` as a :class:`Score`: the composite value and interval, or
    n/a with the reason (``why``: benchmark key -> why it has no score)."""
    why = why or {}
    comp = composite(g, acc, sizes)
    ci = (lambda part, name: list(cis[part][name]) if cis and name in cis[part] else None)  # noqa: E731
    cats: dict[str, Score] = {}
    for c in g.categories:
        name = c['name']
        if name in comp['categories']:
            cats[name] = Score(float(comp['categories'][name]), ci('categories', name))
            continue
        missing = [bench_key(b['name'], b['num_fewshot']) for b in c['benchmarks']
                   if bench_key(b['name'], b['num_fewshot']) not in acc]
        cats[name] = Score(None, None, 'no score: ' + '; '.join(f'{k} {why.get(k, "did not run")}' for k in missing))
    avgs: dict[str, Score] = {}
    for a, lst in g.averages.items():
        have = [x for x in lst if x in comp['categories']]
        if not have:
            avgs[a] = Score(None, None, 'no score: none of its categories has one' + (f" ({', '.join(lst)})"
                                                                                       if lst else ''))
            continue
        left = [x for x in lst if x not in have]
        avgs[a] = Score(float(comp['averages'][a]), ci('averages', a),
                        f"mean of {len(have)} of {len(lst)} categories; left out: {', '.join(left)}" if left else '')
    return cats, avgs


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def bootstrap_indices(n: int, key: str, samples: int, seed: int) -> np.ndarray:
    """(samples, n) resample indices for one benchmark; depends only on (seed, key, n)."""
    return _rng(seed, key).integers(0, n, size=(samples, n))


def _ci(x: np.ndarray, level: float) -> tuple[float, float]:
    a = (1.0 - level) / 2
    return float(np.quantile(x, a)), float(np.quantile(x, 1 - a))


def _strata(x: Correct) -> list[np.ndarray]:
    if isinstance(x, np.ndarray) and x.ndim == 1:
        return [x.astype(np.float64)]
    return [np.asarray(p, dtype=np.float64) for p in x]


def bootstrap(g: Optional[Gauntlet], correct: Mapping[str, Correct], samples: int = 1000, seed: int = 0,
              level: float = 0.95, other: Optional[Mapping[str, Correct]] = None) -> dict[str, dict[str, tuple]]:
    """Percentile intervals for every benchmark, category and average.

    ``correct``: per benchmark its 0/1 array, or for a ``has_categories`` task one array per category
    (each resampled on its own; the benchmark's replicate is the mean of its categories' means).
    With ``other`` (the second model's per-example correctness on the same examples) the intervals
    are for the difference ``correct - other``, resampling the same examples for both (paired).
    """
    reps: dict[str, np.ndarray] = {}
    reps_o: dict[str, np.ndarray] = {}
    sizes: dict[str, int] = {}
    for k, x in correct.items():
        parts = _strata(x)
        parts_o = _strata(other[k]) if other is not None else None
        if parts_o is not None and [len(p) for p in parts_o] != [len(p) for p in parts]:
            raise UserError(f'cannot compare {k}: the two results have {sum(map(len, parts))} and '
                            f'{sum(map(len, parts_o))} examples (or other categories)')
        r = np.zeros(samples)
        ro = np.zeros(samples)
        for j, p in enumerate(parts):
            idx = bootstrap_indices(len(p), k if len(parts) == 1 else f'{k}#{j}', samples, seed)
            r += p[idx].mean(1) / len(parts)
            if parts_o is not None:
                ro += parts_o[j][idx].mean(1) / len(parts)
        reps[k], sizes[k] = r, sum(len(p) for p in parts)
        if other is not None:
            reps_o[k] = ro
    out: dict[str, dict[str, tuple]] = {'benchmarks': {}, 'categories': {}, 'averages': {}}
    for k in reps:
        out['benchmarks'][k] = _ci(reps[k] - reps_o[k] if other is not None else reps[k], level)
    if g is not None:
        comp = composite(g, reps, sizes)
        comp_o = composite(g, reps_o, sizes) if other is not None else None
        for part in ('categories', 'averages'):
            for name, v in comp[part].items():
                if v is None:
                    continue
                v = np.asarray(v) if not np.isscalar(v) else np.full(samples, v)
                if comp_o is not None:
                    vo = comp_o[part][name]
                    v = v - (np.asarray(vo) if not np.isscalar(vo) else vo)
                out[part][name] = _ci(v, level)
    return out
