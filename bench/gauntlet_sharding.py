"""Gauntlet scoring split over N processes vs one process: same per-example results, wall time ratio.

    python bench/gauntlet_sharding.py [--ranks 2] [--checkpoint runs/demo/checkpoints/latest-rank0.pt]
                                      [--corpus data/corpus] [--n 250]

The starter gauntlet's tasks (generated into a temp folder from ``--corpus``) scored by the demo checkpoint
(or a random MPT with d_model 128 when there is none), once by 1 process and once by ``--ranks`` gloo
processes on CPU (``torch.distributed.run``). Every process gets the same share of the CPU threads
(cores / N), like one GPU per process: the speedup is what N devices buy over one. Timed: scoring only
(after a barrier; not imports or model loading).
Goal: per-example results identical, and parallel efficiency (speedup / ranks) >= 0.7.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')


def worker(a) -> None:
    import torch
    import torch.distributed as dist
    torch.set_num_threads(a.threads)
    dist.init_process_group('gloo')
    from foundry_ext.gauntlet.config import RunOptions
    from foundry_ext.gauntlet.models import load_composer_checkpoint, wrap
    from foundry_ext.gauntlet.runner import parse_tasks, run_gauntlet
    from foundry_ext.gauntlet.tasks import load_tasks_file
    if a.checkpoint:
        lm = load_composer_checkpoint(a.checkpoint, device='cpu')
    else:
        from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(a.tokenizer)
        torch.manual_seed(0)
        cfg = MPTConfig(d_model=128, n_heads=4, n_layers=4, max_seq_len=256, vocab_size=len(tok), init_device='cpu',
                        no_bias=True, attn_config={'attn_impl': 'torch', 'rope': True, 'rope_impl': 'hf'})
        lm = wrap(MPTForCausalLM(cfg), tok, 'random tiny MPT', 256, 'random', 'cpu')
    raw = load_tasks_file(str(ROOT / 'eval' / 'starter' / 'tasks.yaml'))
    for t in raw:
        t['dataset_uri'] = str(Path(a.tasks) / Path(t['dataset_uri']).name)
    tasks, errs = parse_tasks(raw)
    assert not errs, errs
    dist.barrier()
    t0 = time.perf_counter()
    res = run_gauntlet(lm, tasks, None, RunOptions(bootstrap_samples=0), log=lambda s: None)
    dist.barrier()
    seconds = time.perf_counter() - t0
    if dist.get_rank() == 0:
        Path(a.out).write_text(json.dumps({'seconds': seconds, 'world': res.world_size, 'model': lm.name,
                                           'correct': {k: b.correct for k, b in res.benchmarks.items()}}))
    dist.destroy_process_group()


def launch(a, ranks: int, threads: int, tasks: Path, out: Path) -> dict:
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(ranks),
           __file__, '--worker', '--threads', str(threads), '--tasks', str(tasks), '--out', str(out),
           '--tokenizer', a.tokenizer] + (['--checkpoint', a.checkpoint] if a.checkpoint else [])
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads)}
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f'{ranks}-process run failed:\n{r.stderr[-3000:]}')
    return json.loads(out.read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--ranks', type=int, default=2)
    p.add_argument('--checkpoint', default=None)
    p.add_argument('--corpus', default=str(ROOT / 'data' / 'corpus'))
    p.add_argument('--tokenizer', default=str(ROOT / 'data' / 'tokenizer'))
    p.add_argument('--n', type=int, default=250, help='examples per starter task')
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--threads', type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument('--tasks', help=argparse.SUPPRESS)
    p.add_argument('--out', help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a)
        return 0
    if a.checkpoint is None and (ROOT / 'runs' / 'demo' / 'checkpoints').is_dir():
        from foundry_ext.gauntlet.models import latest_checkpoint
        a.checkpoint = str(latest_checkpoint(ROOT / 'runs' / 'demo'))
    for need in (a.corpus, a.tokenizer):
        if not Path(need).is_dir():
            sys.exit(f'{need} not found; run `make data` first')
    from foundry_ext.gauntlet.starter import generate
    tmp = Path(tempfile.mkdtemp(prefix='gauntlet-shard-'))
    generate(a.corpus, tmp / 'tasks', seed=17, n=a.n)
    total = os.cpu_count() or 1
    per = max(1, total // a.ranks)
    one = launch(a, 1, per, tmp / 'tasks', tmp / 'one.json')
    many = launch(a, a.ranks, per, tmp / 'tasks', tmp / 'many.json')
    same = one['correct'] == many['correct']
    n = sum(len(c) for c in one['correct'].values())
    speedup = one['seconds'] / many['seconds']
    eff = speedup / a.ranks
    print(f"model: {one['model']}; {len(one['correct'])} tasks, {n} examples; {per} CPU thread(s) per process")
    print(f"1 process: {one['seconds']:.1f} s;  {a.ranks} processes: "
          f"{many['seconds']:.1f} s;  per-example results identical: {same}")
    ok = same and eff >= 0.7
    print(f'BENCH gauntlet_sharding speedup={speedup:.2f} ranks={a.ranks} efficiency={eff:.2f} goal>=0.7 '
          f'{"PASS" if ok else "MISS"}')
    return 0 if same else 1


if __name__ == '__main__':
    sys.exit(main())
