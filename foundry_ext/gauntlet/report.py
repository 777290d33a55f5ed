"""Gauntlet outputs: console table, report.md, results.json, results.csv and a category chart PNG.

All files of one evaluation appear together or not at all (written to a temporary sibling folder
that replaces the output folder in one rename).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Optional

from foundry_ext.atomic import atomic_dir


def _f(x: Optional[float], pct: bool = False) -> str:
    if x is None:
        return '-'
    return f'{100 * x:.1f}' if pct else f'{x:.3f}'


def _ci(ci) -> str:
    return '-' if not ci or ci[0] is None else f'[{ci[0]:.3f}, {ci[1]:.3f}]'


def table(results: dict[str, Any]) -> str:
    """Plain-text table for the console."""
    lines = [f"model: {results['model']['name']}  (hash {results['model']['hash']}, max_seq_len "
             f"{results['max_seq_len']})",
             f"{'benchmark':<34}{'type':<18}{'n':>6}{'acc':>8}{'95% CI':>18}{'baseline':>10}"]
    for k, b in results['benchmarks'].items():
        lines.append(f"{k:<34}{b['icl_task_type'][:17]:<18}{b['n']:>6}{b['accuracy']:>8.3f}{_ci(b.get('ci')):>18}"
                     f"{_f(b.get('random_baseline')):>10}")
    for part in ('categories', 'averages'):
        if results.get(part):
            head = part[:-1] if part != 'categories' else 'category'
            lines.append(f"{head:<34}{'':<18}{'':>6}{'score':>8}{'95% CI':>18}")
            for name, v in results[part].items():
                lines.append(f"{name:<34}{'':<18}{'':>6}{v['score']:>8.3f}{_ci(v.get('ci')):>18}")
    for e in results.get('errors', []):
        lines.append(f'error: {e}')
    if results.get('compare'):
        lines.append(compare_table(results['compare']))
    return '\n'.join(lines)


def compare_table(c: dict) -> str:
    lines = [f"comparison: A = {c['a']['name']}  vs  B = {c['b']['name']}",
             f"{'name':<34}{'A':>8}{'B':>8}{'A-B':>9}{'95% CI of A-B':>20}"]
    for r in c['rows']:
        lines.append(f"{r['name']:<34}{r['a']:>8.3f}{r['b']:>8.3f}{r['diff']:>+9.3f}{_ci(r.get('ci')):>20}")
    return '\n'.join(lines)


def markdown(results: dict[str, Any]) -> str:
    m = results['model']
    bs = results.get('bootstrap', {})
    out = [f"# Gauntlet report: {results.get('run_name', '')}", '',
           f"Model `{m['name']}` (hash `{m['hash']}`), max_seq_len {results['max_seq_len']}, "
           f"{results.get('seconds', 0):.1f} s. Intervals: {int(100 * bs.get('level', 0.95))}% bootstrap "
           f"({bs.get('samples', 0)} resamples of the examples, seed {bs.get('seed')}).", '']
    if results.get('averages'):
        out += ['## Composite', '', '| average | score | 95% CI |', '|---|---|---|']
        out += [f"| {n} | {v['score']:.3f} | {_ci(v.get('ci'))} |" for n, v in results['averages'].items()]
        out += ['', '![categories](categories.png)', '']
    if results.get('categories'):
        out += ['## Categories', '', '| category | score | 95% CI |', '|---|---|---|']
        out += [f"| {n} | {v['score']:.3f} | {_ci(v.get('ci'))} |" for n, v in results['categories'].items()]
        out += ['']
    out += ['## Benchmarks', '', '| benchmark | type | n | accuracy | 95% CI | random baseline | time |',
            '|---|---|---|---|---|---|---|']
    for k, b in results['benchmarks'].items():
        t = 'cached' if b.get('cached') else f"{b.get('seconds', 0):.1f} s"
        out.append(f"| {k} | {b['icl_task_type']} | {b['n']} | {b['accuracy']:.3f} | {_ci(b.get('ci'))} | "
                   f"{_f(b.get('random_baseline'))} | {t} |")
    if results.get('compare'):
        c = results['compare']
        out += ['', '## Comparison', '', f"A = `{c['a']['name']}`, B = `{c['b']['name']}`; interval of A − B "
                'from a paired bootstrap (same resampled examples for both).', '',
                '| name | A | B | A − B | 95% CI |', '|---|---|---|---|---|']
        out += [f"| {r['name']} | {r['a']:.3f} | {r['b']:.3f} | {r['diff']:+.3f} | {_ci(r.get('ci'))} |"
                for r in c['rows']]
    if results.get('errors'):
        out += ['', '## Errors (these tasks or categories were left out)', '']
        out += [f'- {e}' for e in results['errors']]
    return '\n'.join(out) + '\n'


def csv_text(results: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(['kind', 'name', 'num_fewshot', 'icl_task_type', 'n', 'score', 'ci_low', 'ci_high', 'random_baseline'])
    for b in results['benchmarks'].values():
        ci = b.get('ci') or [None, None]
        w.writerow(['benchmark', b['label'], b['num_fewshot'], b['icl_task_type'], b['n'], b['accuracy'],
                    ci[0], ci[1], b.get('random_baseline')])
    for part, kind in (('categories', 'category'), ('averages', 'average')):
        for n, v in results.get(part, {}).items():
            ci = v.get('ci') or [None, None]
            w.writerow([kind, n, '', '', '', v['score'], ci[0], ci[1], ''])
    return buf.getvalue()


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    items = list(results.get('categories', {}).items()) + list(results.get('averages', {}).items())
    if not items:  # no gauntlet: chart the benchmarks
        items = [(k, {'score': b['accuracy'], 'ci': b.get('ci')}) for k, b in results['benchmarks'].items()]
    names = [n for n, _ in items]
    vals = [v['score'] for _, v in items]
    lo = [v['score'] - v['ci'][0] if v.get('ci') and v['ci'][0] is not None else 0 for _, v in items]
    hi = [v['ci'][1] - v['score'] if v.get('ci') and v['ci'][1] is not None else 0 for _, v in items]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 3.8))
    colors = ['#4c72b0'] * len(results.get('categories', {})) + ['#dd8452'] * len(results.get('averages', {}))
    ax.bar(range(len(names)), vals, yerr=[lo, hi], capsize=4, color=colors or '#4c72b0')
    ax.axhline(0, color='black', lw=0.8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha='right')
    ax.set_ylabel('score above random baseline' if results.get('categories') else 'accuracy')
    ax.set_title(f"gauntlet: {results.get('run_name', '')} (95% bootstrap CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: dict[str, Any], out_dir: str | Path) -> Path:
    """results.json, results.csv, report.md, categories.png into ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        (tmp / 'results.json').write_text(json.dumps(results, indent=1))
        (tmp / 'results.csv').write_text(csv_text(results))
        (tmp / 'report.md').write_text(markdown(results))
        chart(results, tmp / 'categories.png')
    return out_dir
