"""Evidence for the curriculum mixer (docs/mixing.md): four tiny-model CPU runs at equal tokens.

    .venv/bin/python docs/mixing_experiment.py [--batches 200] [--only constant,anneal,uniform,adaptive]

(a) constant mix vs (b) the same mix annealed toward `code` over the last 40% (tiny-mix-cpu.yaml):
per-domain eval loss, the target domain should improve. (c) uniform vs (d) adaptive (uniform prior,
weights moved online from per-domain training loss): worst-domain eval loss. Each run is
yamls/pretrain/tiny-mix-cpu.yaml with overrides (about 2.5 minutes each on 2 idle cores). Writes
runs/mixexp-<name>/, docs/mixing_results.json, docs/mixing_eval_loss.png, docs/mixing_weights_<name>.png.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BASE = {'code': 0.4, 'prose': 0.3, 'arithmetic': 0.15, 'records': 0.15}
UNIFORM = {'code': 0.25, 'prose': 0.25, 'arithmetic': 0.25, 'records': 0.25}


def _points(*pts) -> str:
    return '[' + ','.join('{at: ' + str(at) + ', weights: {' + ', '.join(f'{k}: {v}' for k, v in w.items()) + '}}'
                          for at, w in pts) + ']'


RUNS = {
    'constant': [f'train_loader.schedule.points={_points((0.0, BASE))}'],
    'anneal': [],   # the yaml's own schedule: BASE until 0.6, cosine to code 0.8 at 1.0
    'uniform': [f'train_loader.schedule.points={_points((0.0, UNIFORM))}'],
    'adaptive': [f'train_loader.schedule.points={_points((0.0, UNIFORM))}',
                 'train_loader.adaptive={eta: 0.3, ema: 0.8, floor: 0.05, update_every: 4, lag: 2}'],
}


def final_eval(run_dir: Path) -> dict[str, float]:
    out: dict[str, tuple[int, float]] = {}
    for line in (run_dir / 'metrics.jsonl').read_text().splitlines():
        row = json.loads(line)
        for k, v in row.items():
            if k.startswith('metrics/eval/') and k.endswith('/LanguageCrossEntropy'):
                d = k.split('/')[2]
                if d not in out or row['step'] >= out[d][0]:
                    out[d] = (row['step'], v)
    return {d: v for d, (_, v) in sorted(out.items())}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument('--batches', type=int, default=200)
    ap.add_argument('--only', default=','.join(RUNS))
    ap.add_argument('--set', action='append', default=[], help='extra override for every run, e.g. model.d_model=64')
    a = ap.parse_args()
    results = {}
    rpath = ROOT / 'docs' / 'mixing_results.json'
    if rpath.exists():
        results = json.loads(rpath.read_text())
    for name in [n for n in a.only.split(',') if n]:
        run = ROOT / 'runs' / f'mixexp-{name}'
        cmd = [sys.executable, 'scripts/train.py', 'yamls/pretrain/tiny-mix-cpu.yaml', f'run_name=mixexp-{name}',
               f'max_duration={a.batches}ba', f'eval_interval={a.batches}ba', 'eval_first=false',
               f'save_interval={a.batches}ba', 'console_log_interval=50ba', 'python_log_level=warning',
               'eval_subset_num_batches=8', *a.set, *RUNS[name]]
        if run.exists():
            import shutil
            shutil.rmtree(run)
        t = time.time()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if r.returncode:
            print(r.stderr[-3000:], file=sys.stderr)
            return 1
        results[name] = {'eval_loss': final_eval(run), 'seconds': round(time.time() - t, 1),
                         'batches': a.batches, 'overrides': a.set + RUNS[name]}
        from foundry_ext.data.mixing.plot import plot_mix
        plot_mix(run, ROOT / 'docs' / f'mixing_weights_{name}.png')
        print(name, results[name], flush=True)
        mine = results[name]
        results = json.loads(rpath.read_text()) if rpath.exists() else {}   # runs may go in parallel
        results[name] = mine
        rpath.write_text(json.dumps(results, indent=1))
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    results = json.loads(rpath.read_text()) if rpath.exists() else {}
    names = [n for n in RUNS if n in results]
    domains = sorted(results[names[0]]['eval_loss'])
    fig, ax = plt.subplots(figsize=(8, 4))
    wdt = 0.8 / len(names)
    for i, n in enumerate(names):
        ax.bar(np.arange(len(domains)) + i * wdt, [results[n]['eval_loss'][d] for d in domains], wdt, label=n)
    ax.set_xticks(np.arange(len(domains)) + 0.4 - wdt / 2, domains)
    ax.set(ylabel='eval loss (nats/token)', title=f'per-domain eval loss after {a.batches} batches (equal tokens)')
    ax.legend()
    fig.tight_layout()
    fig.savefig(ROOT / 'docs' / 'mixing_eval_loss.png', dpi=110)
    for n in names:
        ev = results[n]['eval_loss']
        print(f'{n:>9}: ' + '  '.join(f'{d} {ev[d]:.3f}' for d in domains) + f'  | worst {max(ev.values()):.3f}'
              f'  ({results[n]["seconds"]:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
