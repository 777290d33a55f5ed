"""Experiment behind docs/mfu_and_loss_spikes.md: injected spikes, no guard vs skip vs rollback.

    .venv/bin/python docs/mfu_spike_experiment.py [--batches 120] [--out runs/spike_exp]

Four runs of yamls/pretrain/tiny-cpu.yaml (the demo model and data, `make data` first), same seed:

* clean     - no injection (its MFU trace is the figure's lower panel)
* no guard  - injected spikes, the guard only logs (actions: [log])
* skip      - injected spikes, actions: [skip]
* rollback  - injected spikes, actions: [skip, rollback] (checkpoints every 10 batches)

Injected: a poison batch (random labels) at step 40 and a one-step 300x LR blow-up at step 65.
Extra key=value overrides after ``--`` go to every run (e.g. a smaller model on a busy machine).
Writes docs/loss_spike_guard.png and prints the final eval loss of each run (mean of the four
domains) as a markdown table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    'clean': {'callbacks.loss_spike_guard.actions': '[log]'},
    'no guard': {'callbacks.loss_spike_guard.actions': '[log]', 'inject': True},
    'skip': {'callbacks.loss_spike_guard.actions': '[skip]', 'inject': True},
    'rollback': {'callbacks.loss_spike_guard.actions': '[skip,rollback]', 'inject': True},
}
POISON, LR_STEP = 40, 65


def run(name: str, spec: dict, out: Path, batches: int, extra: list[str]) -> Path:
    rd = out / name.replace(' ', '_')
    o = {'run_name': rd.name, 'variables.run_dir': str(rd), 'max_duration': f'{batches}ba',
         'autoresume': 'false', 'save_overwrite': 'true',   # each experiment starts over in its folder
         'eval_interval': f'{batches}ba', 'eval_first': 'false', 'save_interval': '10ba',
         'save_num_checkpoints_to_keep': 3, 'callbacks.loss_spike_guard.stop_after': 1000,
         'callbacks.loss_spike_guard.recover_steps': 10, 'python_log_level': 'warning',
         'callbacks.mfu_monitor.log_interval': 5}
    o.update({k: v for k, v in spec.items() if k != 'inject'})
    if spec.get('inject'):
        o.update({'callbacks.inject_spike.poison_steps': f'[{POISON}]', 'callbacks.inject_spike.lr_steps': f'[{LR_STEP}]',
                  'callbacks.inject_spike.lr_factor': 300})
    if (rd / 'metrics.jsonl').exists():
        (rd / 'metrics.jsonl').unlink()
    cmd = [sys.executable, 'scripts/train.py', 'yamls/pretrain/tiny-cpu.yaml', *[f'{k}={v}' for k, v in o.items()], *extra]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [x for x in (r.stdout + r.stderr).splitlines() if 'loss_spike_guard:' in x]
    print(f'## {name}: exit {r.returncode}', *[' ' + x.split('foundry_ext: ')[-1] for x in lines], sep='\n')
    if r.returncode:
        print((r.stdout + r.stderr)[-2000:])
    return rd


def load(rd: Path):
    rows = [json.loads(x) for x in (rd / 'metrics.jsonl').read_text().splitlines()]
    loss = {r['step']: r['loss/train/total'] for r in rows if 'loss/train/total' in r}
    mfu = [(r['step'], r['mfu/mfu']) for r in rows if 'mfu/mfu' in r]
    last = max(r['step'] for r in rows)
    evals = [v for r in rows if r['step'] == last for k, v in r.items()
             if k.startswith('metrics/eval/') and k.endswith('LanguageCrossEntropy')]
    tps = [r['throughput/device/tokens_per_sec'] for r in rows if 'throughput/device/tokens_per_sec' in r]
    return loss, mfu, sum(evals) / max(len(evals), 1), tps


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument('--batches', type=int, default=120)
    p.add_argument('--out', default='runs/spike_exp')
    p.add_argument('--plot_only', action='store_true')
    p.add_argument('--skip_clean', action='store_true', help='no clean run (the MFU trace then comes from skip)')
    p.add_argument('extra', nargs='*', help='key=value overrides for every run')
    a = p.parse_args()
    out = ROOT / a.out
    runs = {n: s for n, s in RUNS.items() if not (a.skip_clean and n == 'clean')}
    dirs = {n: (out / n.replace(' ', '_')) if a.plot_only else run(n, s, out, a.batches, a.extra) for n, s in runs.items()}
    trace = 'clean' if 'clean' in dirs else 'skip'
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(9, 7.5), gridspec_kw={'height_ratios': [2.2, 1]})
    print('\n| run | final eval loss (mean of 4 domains) | final train loss (mean of last 10) |\n|---|---|---|')
    colors = {'clean': '0.6', 'no guard': 'tab:red', 'skip': 'tab:orange', 'rollback': 'tab:green'}
    for name, rd in dirs.items():
        color = colors[name]
        loss, mfu, ev, tps = load(rd)
        steps = sorted(loss)
        tail = sum(loss[s] for s in steps[-10:]) / 10
        print(f'| {name} | {ev:.3f} | {tail:.3f} |')
        ax.plot(steps, [loss[s] for s in steps], color=color, lw=1.2, label=f'{name}: final eval {ev:.3f}')
        if name == trace:
            bx.plot([s for s, _ in mfu], [100 * m for _, m in mfu], color='tab:blue', marker='.')
            print(f'\n{trace} run MFU: median {100 * sorted(m for _, m in mfu)[len(mfu) // 2]:.1f}% of the CPU probe peak, '
                  f'{sorted(tps)[len(tps) // 2]:.0f} tokens/s')
    for s, what in ((POISON, 'poison batch'), (LR_STEP, '300x LR step')):
        ax.axvline(s, color='k', ls=':', lw=0.8)
        ax.text(s + 1, ax.get_ylim()[1] * 0.95, what, fontsize=8, va='top')
    ax.set_yscale('log')
    ax.set_ylabel('train loss (nats/token)')
    ax.set_title('tiny-cpu MPT, injected spikes: loss_spike_guard off / skip / skip+rollback')
    ax.legend(fontsize=8)
    bx.set_xlabel('step (batch)')
    bx.set_ylabel('MFU % (CPU probe peak)')
    bx.set_title(f'mfu_monitor trace, {trace} run', fontsize=9)
    fig.tight_layout()
    fig.savefig(ROOT / 'docs' / 'loss_spike_guard.png', dpi=110)
    print('\nwrote docs/loss_spike_guard.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
