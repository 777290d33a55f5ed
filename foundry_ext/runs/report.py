"""Run report: ``report.md`` + ``loss_curve.png`` from a run folder's ``metrics.jsonl``.

The table gives, per eval domain, the unigram baseline (the loss of a model that ignores
context, from the MDS token counts) and the eval loss before and after training.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from foundry_ext.errors import UserError

_EVAL = re.compile(r'^metrics/eval/(?:(?P<label>[^/]+)/)?LanguageCrossEntropy$')   # no label: one eval_loader
TRAIN_LOSS = 'loss/train/total'


def read_metrics(path: Path) -> list[dict]:
    """The rows of a ``metrics.jsonl``, one run's worth: when a run was resumed without the logger
    cutting what an earlier attempt logged past the checkpoint (files from before that), the
    rows past the restart point are dropped and each (step, metric) keeps its last value."""
    rows: list[dict] = []
    top = None
    with open(path, encoding='utf-8') as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash; the rest is still good
            if not isinstance(row, dict):
                continue
            step = row.get('step')
            if isinstance(step, int):
                if top is not None and step < top:   # a restart from an earlier checkpoint
                    rows = [r for r in rows if not (isinstance(r.get('step'), int) and r['step'] > step)]
                top = step if top is None or step < top else max(top, step)
            rows.append(row)
    seen: set = set()
    out = []
    for row in reversed(rows):   # last value wins for each (step, metric)
        keep = {k: v for k, v in row.items() if k == 'step' or (row.get('step'), k) not in seen}
        seen.update((row.get('step'), k) for k in row if k != 'step')
        if len(keep) > 1 or len(row) == 1:
            out.append(keep)
    return out[::-1]


def summarize(rows: list[dict]) -> dict:
    """{'train': [(step, loss)], 'eval': {label: [(step, loss)]}}"""
    train: list[tuple[Any, float]] = []             # (step, loss); step as logged (None if missing)
    evals: dict[str, list[tuple[Any, float]]] = {}
    for r in rows:
        step = r.get('step')
        for k, v in r.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if k == TRAIN_LOSS:
                train.append((step, float(v)))
            m = _EVAL.match(k)
            if m:
                evals.setdefault(m['label'] or 'eval', []).append((step, float(v)))
    return {'train': train, 'eval': evals}


def _plot(s: dict, out: Path, title: str, baselines: dict[str, float]) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if s['train']:
        xs, ys = zip(*s['train'])
        ax.plot(xs, ys, color='0.6', lw=1, label='train (batch)')
    for label, pts in sorted(s['eval'].items()):
        xs, ys = zip(*pts)
        line, = ax.plot(xs, ys, marker='o', lw=1.5, label=f'eval {label}')
        if label in baselines:
            ax.axhline(baselines[label], color=line.get_color(), ls=':', lw=1)
    if any(label in baselines for label in s['eval']):
        ax.plot([], [], color='0.3', ls=':', lw=1, label='unigram baseline')
    ax.set_xlabel('batch')
    ax.set_ylabel('cross-entropy (nats/token)')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _mds_root_of(loader: dict) -> str | None:
    """The MDS root a train loader reads: ``dataset.root`` (corpus_text) or the common parent
    of its streams' ``local`` folders (mixture, text with streams)."""
    root = (loader.get('dataset') or {}).get('root')
    if root:
        return root
    streams = loader.get('streams') or (loader.get('dataset') or {}).get('streams') or {}
    parents = {str(Path(s['local']).parent) for s in streams.values() if isinstance(s, dict) and s.get('local')}
    return parents.pop() if len(parents) == 1 else None


def write_report(run_dir: str | Path, mds_root: str | Path | None = None,
                 new_domains: list[str] | None = None) -> Path:
    run = Path(run_dir)
    mfile = run / 'metrics.jsonl'
    if not mfile.is_file():
        raise UserError(f'{mfile} does not exist; train with the metrics_jsonl logger '
                        f'(loggers: {{metrics_jsonl: {{folder: {run}}}}}) first')
    s = summarize(read_metrics(mfile))
    if not s['train'] and not s['eval']:
        raise UserError(f'{mfile} holds no train or eval loss yet; did the run get past its first batch?')
    hparams: dict = {}
    hp = run / 'hparams.json'
    if hp.is_file():
        try:
            hparams = json.loads(hp.read_text())
        except ValueError:
            hparams = {}
    if mds_root is None:
        try:
            mds_root = _mds_root_of(hparams.get('train_loader') or {})
        except (ValueError, AttributeError):
            mds_root = None
    baselines = {}
    if mds_root and Path(mds_root).is_dir():
        from foundry_ext.prep.text import unigram_baselines
        baselines = unigram_baselines(mds_root)

    _plot(s, run / 'loss_curve.png', f'{run.name}: loss', baselines)
    lines = [f'# Run report: {run.name}', '']
    if s['train']:
        (s0, l0), (s1, l1) = s['train'][0], s['train'][-1]
        lines += [f'Train loss: {l0:.3f} at batch {s0} -> {l1:.3f} at batch {s1}.', '']
    if s['eval']:
        lines += ['| eval domain | unigram baseline | initial eval loss | final eval loss | final / unigram |',
                  '|---|---|---|---|---|']
        for label, pts in sorted(s['eval'].items()):
            base = baselines.get(label, math.nan)
            first, last = pts[0], pts[-1]
            ratio = last[1] / base if base == base else math.nan
            b_s, r_s = (f'{base:.3f}', f'{ratio:.2f}') if base == base else ('n/a', 'n/a')
            lines.append(f'| {label} | {b_s} | {first[1]:.3f} (batch {first[0]}) | '
                         f'{last[1]:.3f} (batch {last[0]}) | {r_s} |')
        lines.append('')
        lines.append('Losses are cross-entropy in nats per token. The unigram baseline is the loss of '
                     'a model that predicts every token from its training-set frequency alone.')
        lines.append('')
        from foundry_ext.runs.forgetting import forgetting_lines, is_continued
        if is_continued(hparams) or new_domains:
            lines += forgetting_lines(s['eval'], hparams, new_domains)
    lines += _sft_eval_lines(run / 'sft_eval.json')
    lines += ['![loss curve](loss_curve.png)', '']
    out = run / 'report.md'
    tmp = out.with_suffix('.md.tmp')
    tmp.write_text('\n'.join(lines))
    tmp.replace(out)
    return out


def _sft_eval_lines(path: Path) -> list[str]:
    """The held-out instruction-following table of ``foundry-ext sft-eval --out <run>/sft_eval.json``
    (one row per model and task: before SFT first when it was run with ``--compare``)."""
    if not path.is_file():
        return []
    try:
        res = json.loads(path.read_text())
    except ValueError:
        return [f'({path.name} is not valid JSON; re-run `foundry-ext sft-eval --out {path}`)', '']
    rows = res if isinstance(res, list) else [res]
    lines = ['## Held-out instruction following (`foundry-ext sft-eval`)', '',
             '| model | task | n | exact match | format | strict |', '|---|---|---|---|---|---|']
    for r in rows:
        per = dict(r.get('tasks') or {})
        per['all'] = {k: r.get(k, math.nan) for k in ('exact_match', 'format', 'strict')} | {'n': r.get('n', 0)}
        for task, d in per.items():
            lines.append(f"| {r.get('model', '?')} | {task} | {d.get('n', 0)} | {d.get('exact_match', math.nan):.3f} | "
                         f"{d.get('format', math.nan):.3f} | {d.get('strict', math.nan):.3f} |")
    lines += ['', 'Exact match: the greedy answer, cut at the end-of-turn marker or a newline, starts with the '
              'answer after normalization (the gauntlet\'s `generation_task_with_answers` metric). Format: the '
              'model ended its turn and wrote one answer of the asked-for shape and nothing else. Strict: both.', '']
    return lines
