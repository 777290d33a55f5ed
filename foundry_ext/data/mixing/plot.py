"""Planned vs realized mixture weights of a run, from its metrics.jsonl (`foundry_ext mixplot`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from foundry_ext.errors import UserError


def read_mix(metrics: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{stream: {kind: [(step, value)]}}`` for every ``mix/<stream>/<kind>`` metric."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for n, line in enumerate(metrics.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise UserError(f'{metrics}:{n} is not json; is this a metrics_jsonl file?') from None
        for k, v in row.items():
            if k.startswith('mix/') and k.count('/') == 2 and isinstance(v, (int, float)):
                _, s, kind = k.split('/')
                out.setdefault(s, {}).setdefault(kind, []).append((int(row.get('step') or 0), float(v)))
    return out


def plot_mix(run_dir: str | Path, out: Optional[str | Path] = None) -> Path:
    run_dir = Path(run_dir)
    metrics = run_dir / 'metrics.jsonl' if run_dir.is_dir() else run_dir
    if not metrics.is_file():
        raise UserError(f'{metrics} does not exist; train with the metrics_jsonl logger (loggers.metrics_jsonl.folder)')
    mix = read_mix(metrics)
    if not mix:
        raise UserError(f'{metrics} has no mix/<stream>/... metrics; train with train_loader.name: mixture '
                        'and callbacks: {mix_logger: {}}')
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for i, (s, kinds) in enumerate(sorted(mix.items())):
        c = colors[i % len(colors)]
        if 'planned' in kinds:
            ax.plot(*zip(*kinds['planned']), '--', color=c, label=f'{s} planned')
        if 'weight' in kinds and kinds.get('weight') != kinds.get('planned'):
            ax.plot(*zip(*kinds['weight']), '-', color=c, label=f'{s} used (adaptive)')
        if 'realized' in kinds:
            ax.plot(*zip(*kinds['realized']), '.', color=c, alpha=0.5, ms=4, label=f'{s} realized')
        if 'tokens' in kinds:
            ax2.plot(*zip(*kinds['tokens']), '-', color=c, label=f'{s} consumed')
        if 'target_tokens' in kinds:
            ax2.plot(*zip(*kinds['target_tokens']), ':', color=c, label=f'{s} target')
    ax.set(xlabel='batch', ylabel='weight', title='mixture weights: planned vs realized', ylim=(0, 1))
    ax2.set(xlabel='batch', ylabel='tokens', title='tokens per stream: consumed vs target')
    ax.legend(fontsize=7, ncol=2)
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = Path(out) if out else metrics.parent / 'mix_weights.png'
    tmp = out.with_name(out.name + '.tmp.png')
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out
