"""The results of one gauntlet run, typed: what report, compare, the cache and the callback read.

:class:`GauntletResults` is what :func:`foundry_ext.gauntlet.runner.run_gauntlet` returns;
``to_json()`` is the ``results.json`` layout (per-example correctness included) and ``from_json``
reads it back (also files written before these types existed). A composite entry whose score
cannot be computed has ``score = None`` and says why in ``reason``: it is shown as ``n/a``, never
as a number. No torch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass
class SubsetResult:
    """One category of a ``has_categories`` task (LLM Foundry's ``<label>/<k>-shot/<category>``)."""
    n: int
    accuracy: float


@dataclass
class BenchmarkResult:
    """One (task, num_fewshot)."""
    label: str
    num_fewshot: int
    icl_task_type: str
    max_seq_len: int
    n: int
    accuracy: float                    # with categories: their unweighted mean, as LLM Foundry's gauntlet
    correct: str                       # per-example 0/1, in item order (category by category)
    cached: bool = False
    seconds: float = 0.0
    ci: Optional[list[float]] = None
    random_baseline: Optional[float] = None
    subsets: dict[str, SubsetResult] = field(default_factory=dict)

    def strata(self) -> list[np.ndarray]:
        """Per-example correctness, one array per category (one array without categories)."""
        c = np.array([int(x) for x in self.correct], dtype=np.int8)
        if not self.subsets:
            return [c]
        cuts = np.cumsum([s.n for s in self.subsets.values()])[:-1]
        return list(np.split(c, cuts))


@dataclass
class Score:
    """A category or a named average of the composite."""
    score: Optional[float]             # None: n/a
    ci: Optional[list[float]] = None
    reason: str = ''                   # why it is n/a, or what it leaves out

    @property
    def available(self) -> bool:
        return self.score is not None


@dataclass
class CompareRow:
    name: str
    kind: str                          # benchmark | category | average
    a: float
    b: float
    diff: float
    ci: Optional[list[float]] = None


@dataclass
class Comparison:
    a: dict[str, str]
    b: dict[str, str]
    rows: list[CompareRow] = field(default_factory=list)


@dataclass
class GauntletResults:
    model: dict[str, str]              # name, hash
    max_seq_len: int
    world_size: int = 1
    benchmarks: dict[str, BenchmarkResult] = field(default_factory=dict)
    categories: dict[str, Score] = field(default_factory=dict)
    averages: dict[str, Score] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    bootstrap: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    run_name: str = ''
    compare: Optional[Comparison] = None

    def correctness(self) -> dict[str, list[np.ndarray]]:
        return {k: b.strata() for k, b in self.benchmarks.items()}

    def metrics(self, prefix: str = 'gauntlet') -> dict[str, float]:
        """Flat metric names -> values for a logger; n/a entries are left out."""
        m: dict[str, float] = {}
        for k, b in self.benchmarks.items():
            m[f'{prefix}/{k}'] = b.accuracy
            for cat, s in b.subsets.items():
                m[f'{prefix}/{k}/{cat}'] = s.accuracy
        m.update({f'{prefix}/category/{k}': v.score for k, v in self.categories.items() if v.score is not None})
        m.update({f'{prefix}/average/{k}': v.score for k, v in self.averages.items() if v.score is not None})
        return m

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GauntletResults:
        def bench(b: dict) -> BenchmarkResult:
            subs = {k: SubsetResult(**v) for k, v in (b.get('subsets') or {}).items()}
            names = {f.name for f in dataclasses.fields(BenchmarkResult)}
            return BenchmarkResult(**{**{k: v for k, v in b.items() if k in names}, 'subsets': subs})

        def score(v: dict) -> Score:
            return Score(v.get('score'), v.get('ci'), v.get('reason', ''))

        cmp = d.get('compare')
        return cls(model=dict(d['model']), max_seq_len=int(d.get('max_seq_len', 0)),
                   world_size=int(d.get('world_size', 1)),
                   benchmarks={k: bench(b) for k, b in d.get('benchmarks', {}).items()},
                   categories={k: score(v) for k, v in d.get('categories', {}).items()},
                   averages={k: score(v) for k, v in d.get('averages', {}).items()},
                   errors=list(d.get('errors', [])), bootstrap=dict(d.get('bootstrap', {})),
                   seconds=float(d.get('seconds', 0.0)), run_name=str(d.get('run_name', '')),
                   compare=Comparison(cmp['a'], cmp['b'], [CompareRow(**r) for r in cmp['rows']]) if cmp else None)
