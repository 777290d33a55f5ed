"""Resume harness: kill a tiny run at k points, re-run the same command each time, compare with an
uninterrupted run -- every logged loss and metric, the eval metrics, the final weights.

For each loader (``corpus_text`` = tiny-cpu.yaml, ``mixture`` = tiny-mix-cpu.yaml, whose per-stream
token counters ``mix/<stream>/tokens`` are compared too) and 1 and 2 processes (gloo):

* SIGKILL at k points (seeded): mid-step, during a checkpoint write (the file half written) and
  during an evaluation, each followed by a re-run of the same command;
* SIGTERM at m points: mid-step, while a batch loads, during an evaluation, during a checkpoint
  write, and (2 processes) to one rank only -- each must exit 75 with a checkpoint at the step it
  stopped, and the re-run must resume from exactly that step (nothing lost).

A kill counts as bit-identical when everything the run logged after it (up to the next fault)
equals the uninterrupted run bit for bit, and the sequence ends with the same final weights.
``metrics.jsonl`` must never hold a (step, metric) twice. Faults are injected deterministically
by ``bench/resume_faults.py`` (LLM Foundry ``code_paths``), so the command is the same each time.

Processes are forked from this (pre-imported) harness, which saves the ~30 s of imports per
attempt; ``--launch subprocess`` runs ``python scripts/train.py`` / ``composer -n 2`` instead.

    .venv/bin/python bench/resume.py                 # all 4 configurations (make bench-resume)
    .venv/bin/python bench/resume.py --loaders corpus_text --procs 1 --kills 5
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
YAMLS = {'corpus_text': ROOT / 'yamls/pretrain/tiny-cpu.yaml', 'mixture': ROOT / 'yamls/pretrain/tiny-mix-cpu.yaml'}
MAX, SAVE, EVAL = 24, 4, 8
COMPARED = re.compile(r'^(loss/|metrics/|mix/|loss_spike/|lr-)')


def build_data(work: Path) -> Path:
    data = work / 'data'
    if (data / 'mds' / 'stats.json').exists():
        return data
    from foundry_ext.prep.corpus import build_corpus, iter_texts
    from foundry_ext.prep.text import convert_to_mds
    from foundry_ext.prep.tokenizer import train_tokenizer
    shutil.rmtree(data, ignore_errors=True)
    build_corpus(data / 'corpus', size_mb=0.3, seed=3, val_fraction=0.1)
    train_tokenizer(iter_texts(data / 'corpus'), data / 'tokenizer', vocab_size=512)
    convert_to_mds(data / 'corpus', data / 'tokenizer', data / 'mds', concat_tokens=64)
    return data


def command(loader: str, data: Path, run_dir: Path) -> list[str]:
    o = {'variables.tokenizer_dir': data / 'tokenizer', 'variables.data_root': data / 'mds',
         'variables.run_dir': run_dir, 'variables.max_seq_len': 64, 'model.vocab_size': 512, 'model.d_model': 32,
         'model.n_heads': 2, 'model.n_layers': 1, 'global_train_batch_size': 8, 'device_train_microbatch_size': 4,
         'device_eval_batch_size': 8, 'eval_subset_num_batches': 1, 'max_duration': f'{MAX}ba',
         'save_interval': f'{SAVE}ba', 'eval_interval': f'{EVAL}ba', 'save_num_checkpoints_to_keep': 2,
         'scheduler.t_warmup': '4ba', 'console_log_interval': '100ba', 'python_log_level': 'error',
         'log_to_console': 'false', 'callbacks.mfu_monitor.peak_flops': 1.0e12,
         'code_paths': f'[{ROOT / "bench/resume_faults.py"}]'}
    if loader == 'mixture':
        o['callbacks.mix_logger.log_interval'] = 1
    return [str(YAMLS[loader])] + [f'{k}={v}' for k, v in o.items()]


# ------------------------------------------------------------------------------ launching


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _fork_rank(rank: int, world: int, port: int, argv: list[str], fault: str, log: Path) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ['FOUNDRY_EXT_FAULT'] = fault
        if world > 1:
            os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                              NODE_RANK='0', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
        from foundry_ext.commands.train import main
        code = main(list(argv))
    except BaseException:   # noqa: BLE001 - a child must never return into the harness
        import traceback
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def attempt(argv: list[str], procs: int, fault: str, log: Path, launch: str, timeout: float) -> tuple[int, str, float]:
    """One run of the command; (exit code, negative = killed by that signal; its rank-0 stderr; seconds)."""
    t0 = time.time()
    rc, err = _attempt(argv, procs, fault, log, launch, timeout)
    return rc, err, time.time() - t0


def _attempt(argv: list[str], procs: int, fault: str, log: Path, launch: str, timeout: float) -> tuple[int, str]:
    if launch == 'subprocess':
        py = sys.executable
        cmd = [py, 'scripts/train.py', *argv] if procs == 1 else \
            [str(Path(py).parent / 'composer'), '-n', str(procs), 'scripts/train.py', *argv]
        env = {**os.environ, 'FOUNDRY_EXT_FAULT': fault}
        with open(log, 'w') as f:
            try:
                rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = 124
        return rc, log.read_text(errors='replace')
    port = _free_port()
    logs = [log.with_suffix(f'.rank{r}.log') for r in range(procs)]
    pids = {_fork_rank(r, procs, port, argv, fault, logs[r]): r for r in range(procs)}
    codes: dict[int, int] = {}
    t0 = time.time()
    while len(codes) < procs:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            if time.time() - t0 > timeout:
                for p in pids:
                    if pids[p] not in codes:
                        os.kill(p, signal.SIGKILL)
            time.sleep(0.05)
            continue
        if pid not in pids:
            continue
        codes[pids[pid]] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if codes[pids[pid]] == -signal.SIGKILL:   # a lost node takes its job with it
            for p, r in pids.items():
                if r not in codes:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
    rc = next((c for c in codes.values() if c != 0), 0)
    return rc, logs[0].read_text(errors='replace')


# ------------------------------------------------------------------------------ comparing


def read_raw(run_dir: Path) -> tuple[dict, int]:
    """{(step, metric): value} of the compared metrics, and how many (step, metric) appear twice."""
    out: dict = {}
    dups = 0
    p = run_dir / 'metrics.jsonl'
    if not p.exists():
        return out, 0
    for line in p.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        for k, v in row.items():
            if k != 'step' and COMPARED.match(k):
                key = (row.get('step'), k)
                dups += key in out
                out[key] = v
    return out, dups


def final_weights(run_dir: Path):
    from foundry_ext.safeload import load_checkpoint
    p = run_dir / 'checkpoints' / f'ep0-ba{MAX}-rank0.pt'
    return load_checkpoint(p)['state']['model'] if p.exists() else None


def same_weights(a, b) -> bool:
    import torch
    return a is not None and b is not None and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def plan(kind: str, n: int, seed: int, procs: int) -> list[tuple[str, float, int | None]]:
    """Fault points (strictly increasing in time): (where, step, expected checkpoint step or None)."""
    rng = random.Random(seed)
    saves = [s for s in range(SAVE, MAX, SAVE) if s % EVAL]
    evals = list(range(EVAL, MAX, EVAL))
    if kind == 'kill':
        pts = [('save', rng.choice(saves)), ('eval', rng.choice(evals))]
        while len(pts) < n:
            s = rng.randrange(1, MAX)
            if all(s != p[1] for p in pts):
                pts.append(('step', s))
    else:
        pts = [('step', rng.randrange(1, 6)), ('load', rng.randrange(7, 11)), ('eval', 16),
               ('save', 20)][:n]
    order = {'save': -0.5, 'eval': -0.6, 'step': 0.0, 'load': -0.1}
    pts.sort(key=lambda p: p[1] + order[p[0]])
    return [(w, s, None) for w, s in pts]


def expected_stop(where: str, step: int) -> int:
    """The step a SIGTERM at this point stops and checkpoints at."""
    return step + 1 if where == 'step' else step


def run_sequence(kind: str, loader: str, procs: int, argv: list[str], run_dir: Path, ref: dict, ref_w, n: int,
                 seed: int, launch: str, timeout: float, logdir: Path) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    faults = plan(kind, n, seed, procs)
    sig = 'kill' if kind == 'kill' else 'term'
    rows, ok_count, spent = [], 0, 0.0
    pending = None    # the previous fault's row, judged by what the next attempt logs
    for i, fault in enumerate([*faults, None]):
        spec = ''
        if fault is not None:
            where, step, _ = fault
            spec = f'{sig}@{where}:{step}' + ('@rank1' if kind == 'term' and procs > 1 and where == 'step' else '')
        rc, err, secs = attempt(argv, procs, spec, logdir / f'{kind}-{loader}-{procs}-{i}.log', launch, timeout)
        spent += secs
        m = re.search(r'resuming run \S+ from \S+ at step (\d+)', err)
        resumed = int(m.group(1)) if m else 0
        got, dups = read_raw(run_dir)
        match = all(ref.get(k) == v for k, v in got.items())
        if pending is not None:
            pending['resumed_from'] = resumed
            pending['redone'] = pending['done'] - resumed     # steps trained again after this fault
            pending['identical'] = match and dups == 0
            if kind == 'term':
                pending['nothing_lost'] = resumed == pending['stop_at']
        if fault is not None:
            row = {'fault': spec, 'rc': rc, 'expect_rc': -9 if kind == 'kill' else 75, 'done': int(fault[1])}
            if kind == 'term':
                sm = re.search(r'stopped by SIG\w+ .*?at step (\d+)', err)
                row['stop_at'] = int(sm.group(1)) if sm else None
                row['stop_ok'] = row['stop_at'] == expected_stop(fault[0], fault[1])
                row['done'] = row['stop_at'] if row['stop_at'] is not None else int(fault[1])
            rows.append(row)
            pending = row
        else:
            final = {'rc': rc, 'weights': same_weights(final_weights(run_dir), ref_w), 'complete': got.keys() == ref.keys(),
                     'dups': dups}
    for r in rows:
        good = r['rc'] == r['expect_rc'] and r.get('identical') and final['weights'] and final['complete'] \
            and final['rc'] == 0 and (kind == 'kill' or (r.get('stop_ok') and r.get('nothing_lost')))
        r['ok'] = bool(good)
        ok_count += r['ok']
    return {'rows': rows, 'final': final, 'ok': ok_count, 'n': len(rows), 'secs': spent,
            'redone': sum(r.get('redone', 0) for r in rows)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--loaders', nargs='+', default=['corpus_text', 'mixture'], choices=list(YAMLS))
    ap.add_argument('--procs', nargs='+', type=int, default=[1, 2])
    ap.add_argument('--kills', type=int, default=5, help='SIGKILL points per configuration (>= 2)')
    ap.add_argument('--terms', type=int, default=4, help='SIGTERM points per configuration (<= 4)')
    ap.add_argument('--seed', type=int, default=7)
    ap.add_argument('--launch', choices=['fork', 'subprocess'], default='fork')
    ap.add_argument('--timeout', type=float, default=900, help='seconds per attempt')
    ap.add_argument('--work', default=os.environ.get('TMPDIR', '/tmp') + '/foundry_ext_bench_resume')
    a = ap.parse_args()
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    os.chdir(ROOT)
    work = Path(a.work)
    logdir = work / 'logs'
    logdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = build_data(work)
    t_imports = time.time()
    if a.launch == 'fork':   # import once here; every attempt is a fork of this process
        import llmfoundry.command_utils.train  # noqa: F401

        import foundry_ext.checkpoint.callbacks  # noqa: F401
        import foundry_ext.checkpoint.trainer  # noqa: F401
        import foundry_ext.commands.train  # noqa: F401
        import foundry_ext.config.validate  # noqa: F401
        import foundry_ext.data.corpus_text  # noqa: F401
        import foundry_ext.data.mixing.callback  # noqa: F401
        import foundry_ext.data.mixing.loader  # noqa: F401
        import foundry_ext.runs.metrics  # noqa: F401
        import foundry_ext.stability.callback  # noqa: F401
        import foundry_ext.throughput.callback  # noqa: F401
    t_imports = time.time() - t_imports   # what every real relaunch pays on top (fork mode skips it)
    results = []
    for loader in a.loaders:
        for procs in a.procs:
            ref_dir = work / f'ref-{loader}-{procs}'
            shutil.rmtree(ref_dir, ignore_errors=True)
            t = time.time()
            rc, err, ref_secs = attempt(command(loader, data, ref_dir), procs, '',
                                        logdir / f'ref-{loader}-{procs}.log', a.launch, a.timeout)
            if rc != 0:
                print(f'reference run {loader} x{procs} failed (exit {rc}); see {logdir}', file=sys.stderr)
                print('BENCH resume bit_identical=0 goal>=1.0 MISS')
                return 0
            ref, _ = read_raw(ref_dir)
            ref_w = final_weights(ref_dir)
            run_dir = work / f'run-{loader}-{procs}'
            argv = command(loader, data, run_dir)
            kill = run_sequence('kill', loader, procs, argv, run_dir, ref, ref_w, a.kills, a.seed + procs, a.launch,
                                a.timeout, logdir)
            term = run_sequence('term', loader, procs, argv, run_dir, ref, ref_w, a.terms, a.seed, a.launch, a.timeout,
                                logdir)
            for r in (kill, term):   # wall time a fault costs: the sequence's attempts minus one clean run
                r['lost'] = (r['secs'] - ref_secs) / max(r['n'], 1)
            results.append((loader, procs, kill, term, time.time() - t, ref_secs))
            for kind, r in (('SIGKILL', kill), ('SIGTERM', term)):
                print(f'{loader:>11} x{procs} {kind}: {r["ok"]}/{r["n"]} bit-identical  '
                      + '  '.join(f'{x["fault"]}->{"ok" if x["ok"] else "FAIL"}(rc {x["rc"]}, resumed at '
                                  f'{x.get("resumed_from")}' + (f', stopped at {x["stop_at"]}' if 'stop_at' in x else '')
                                  + ')' for x in r['rows'])
                      + f'  final weights {"equal" if r["final"]["weights"] else "DIFFER"}'
                      + f'  steps redone {r["redone"]}, {r["lost"]:.1f} s lost per fault', flush=True)
    print()
    print('| loader | procs | SIGKILL | SIGTERM (checkpoint at the signal step, nothing lost) | steps redone '
          '(kill / term) | s lost per fault (kill / term) | clean run s | seconds |')
    print('|---|---|---|---|---|---|---|---|')
    total = good = 0
    for loader, procs, kill, term, secs, ref_secs in results:
        print(f'| {loader} | {procs} | {kill["ok"]}/{kill["n"]} bit-identical | {term["ok"]}/{term["n"]} bit-identical '
              f'| {kill["redone"]} / {term["redone"]} | {kill["lost"]:.1f} / {term["lost"]:.1f} | {ref_secs:.0f} '
              f'| {secs:.0f} |')
        total += kill['n'] + term['n']
        good += kill['ok'] + term['ok']
    print(f'\n{good}/{total} bit-identical ({time.time() - t0:.0f} s; logs in {logdir})')
    if a.launch == 'fork':
        print(f'(fork mode: a real relaunch also pays the imports, {t_imports:.0f} s here, per fault)')
    frac = good / total if total else 0.0
    print(f'BENCH resume bit_identical={frac:.3f} goal>=1.000 {"PASS" if total and good == total else "MISS"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
