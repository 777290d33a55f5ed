"""Gauntlet outputs: console table, report.md, results.json, results.csv and a category chart PNG.

All files of one evaluation appear together or not at all (written to a temporary sibling folder
that replaces the output folder in one rename).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

from foundry_ext.atomic import atomic_dir
from foundry_ext.gauntlet.results import Comparison, GauntletResults, Score


def _f(x: Optional[float], pct: bool = False) -> str:
    if x is None:
        return '-'
    return f'{100 * x:.1f}' if pct else f'{x:.3f}'


def _ci(ci) -> str:
    return '-' if not ci or ci[0] is None else f'[{ci[0]:.3f}, {ci[1]:.3f}]'


def _score(v: Score) -> str:
    return f'{v.score:.3f}' if v.score is not None else 'n/a'


def _note(v: Score) -> str:
    return f'  ({v.reason})' if v.reason else ''


def table(results: GauntletResults) -> str:
    """Plain-text table for the console."""
    r = results
    lines = [f"model: {r.model['name']}  (hash {r.model['hash']}, max_seq_len {r.max_seq_len})",
             f"{'benchmark':<34}{'type':<18}{'n':>6}{'acc':>8}{'95% CI':>18}{'baseline':>10}"]
    for k, b in r.benchmarks.items():
        lines.append(f"{k:<34}{b.icl_task_type[:17]:<18}{b.n:>6}{b.accuracy:>8.3f}{_ci(b.ci):>18}"
                     f"{_f(b.random_baseline):>10}")
        for cat, sub in b.subsets.items():
            lines.append(f"  {cat[:30]:<32}{'':<18}{sub.n:>6}{sub.accuracy:>8.3f}")
    for head, part in (('category', r.categories), ('average', r.averages)):
        if part:
            lines.append(f"{head:<34}{'':<18}{'':>6}{'score':>8}{'95% CI':>18}")
            for name, v in part.items():
                lines.append(f"{name:<34}{'':<18}{'':>6}{_score(v):>8}{_ci(v.ci):>18}{_note(v)}")
    for e in r.errors:
        lines.append(f'error: {e}')
    if r.compare:
        lines.append(compare_table(r.compare))
    return '\n'.join(lines)


def compare_table(c: Comparison) -> str:
    lines = [f"comparison: A = {c.a['name']}  vs  B = {c.b['name']}",
             f"{'name':<34}{'A':>8}{'B':>8}{'A-B':>9}{'95% CI of A-B':>20}"]
    for row in c.rows:
        lines.append(f"{row.name:<34}{row.a:>8.3f}{row.b:>8.3f}{row.diff:>+9.3f}{_ci(row.ci):>20}")
    return '\n'.join(lines)


def markdown(results: GauntletResults) -> str:
    r = results
    bs = r.bootstrap
    out = [f'# Gauntlet report: {r.run_name}', '',
           f"Model `{r.model['name']}` (hash `{r.model['hash']}`), max_seq_len {r.max_seq_len}, "
           f"{r.seconds:.1f} s. Intervals: {int(100 * bs.get('level', 0.95))}% bootstrap "
           f"({bs.get('samples', 0)} resamples of the examples, seed {bs.get('seed')}).", '']
    if r.averages:
        out += ['## Composite', '', '| average | score | 95% CI | note |', '|---|---|---|---|']
        out += [f'| {n} | {_score(v)} | {_ci(v.ci)} | {v.reason} |' for n, v in r.averages.items()]
        out += ['', '![categories](categories.png)', '']
    if r.categories:
        out += ['## Categories', '', '| category | score | 95% CI | note |', '|---|---|---|---|']
        out += [f'| {n} | {_score(v)} | {_ci(v.ci)} | {v.reason} |' for n, v in r.categories.items()]
        out += ['']
    out += ['## Benchmarks', '', '| benchmark | type | n | accuracy | 95% CI | random baseline | time |',
            '|---|---|---|---|---|---|---|']
    for k, b in r.benchmarks.items():
        t = 'cached' if b.cached else f'{b.seconds:.1f} s'
        out.append(f'| {k} | {b.icl_task_type} | {b.n} | {b.accuracy:.3f} | {_ci(b.ci)} | '
                   f'{_f(b.random_baseline)} | {t} |')
        out += [f'| {k}/{cat} | category | {sub.n} | {sub.accuracy:.3f} | | | |' for cat, sub in b.subsets.items()]
    if r.compare:
        c = r.compare
        out += ['', '## Comparison', '', f"A = `{c.a['name']}`, B = `{c.b['name']}`; interval of A − B "
                'from a paired bootstrap (same resampled examples for both).', '',
                '| name | A | B | A − B | 95% CI |', '|---|---|---|---|---|']
        out += [f'| {row.name} | {row.a:.3f} | {row.b:.3f} | {row.diff:+.3f} | {_ci(row.ci)} |' for row in c.rows]
    if r.errors:
        out += ['', '## Errors (these tasks or categories were left out)', '']
        out += [f'- {e}' for e in r.errors]
    return '\n'.join(out) + '\n'


def csv_text(results: GauntletResults) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(['kind', 'name', 'num_fewshot', 'icl_task_type', 'n', 'score', 'ci_low', 'ci_high', 'random_baseline',
                'note'])
    for b in results.benchmarks.values():
        ci: list = b.ci or [None, None]
        w.writerow(['benchmark', b.label, b.num_fewshot, b.icl_task_type, b.n, b.accuracy, ci[0], ci[1],
                    b.random_baseline, ''])
        for cat, sub in b.subsets.items():
            w.writerow(['benchmark_category', f'{b.label}/{cat}', b.num_fewshot, b.icl_task_type, sub.n, sub.accuracy,
                        '', '', '', ''])
    for kind, part in (('category', results.categories), ('average', results.averages)):
        for n, v in part.items():
            vci: list = v.ci or [None, None]
            w.writerow([kind, n, '', '', '', v.score if v.score is not None else 'n/a', vci[0], vci[1], '', v.reason])
    return buf.getvalue()


def chart(results: GauntletResults, path: Path) -> None:
    """Bars of the categories and averages (n/a ones labelled, no bar), or of the benchmarks."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    items = [(n, v, '#4c72b0') for n, v in results.categories.items()] + \
        [(n, v, '#dd8452') for n, v in results.averages.items()]
    if not items:  # no gauntlet: chart the benchmarks
        items = [(k, Score(b.accuracy, b.ci), '#4c72b0') for k, b in results.benchmarks.items()]
    names = [n if v.score is not None else f'{n} (n/a)' for n, v, _ in items]
    vals = [v.score if v.score is not None else 0.0 for _, v, _ in items]
    lo = [v.score - v.ci[0] if v.score is not None and v.ci and v.ci[0] is not None else 0 for _, v, _ in items]
    hi = [v.ci[1] - v.score if v.score is not None and v.ci and v.ci[1] is not None else 0 for _, v, _ in items]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 3.8))
    ax.bar(range(len(names)), vals, yerr=[lo, hi], capsize=4, color=[c for _, _, c in items] or '#4c72b0')
    ax.axhline(0, color='black', lw=0.8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha='right')
    ax.set_ylabel('score above random baseline' if results.categories else 'accuracy')
    ax.set_title(f'gauntlet: {results.run_name} (95% bootstrap CI)')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: GauntletResults, out_dir: str | Path) -> Path:
    """results.json, results.csv, report.md, categories.png into ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        (tmp / 'results.json').write_text(json.dumps(results.to_json(), indent=1))
        (tmp / 'results.csv').write_text(csv_text(results))
        (tmp / 'report.md').write_text(markdown(results))
        chart(results, tmp / 'categories.png')
    return out_dir
