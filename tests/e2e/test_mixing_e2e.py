"""Real Composer runs of the mixture loader: exact resumption from checkpoints at random steps,
across 1 and 2 ranks and 0 and 2 DataLoader workers, plain and adaptive (subprocesses)."""
import json
import os
import random
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_SEQ, TINY_VOCAB

pytestmark = pytest.mark.slow
YAML = str(ROOT / 'yamls' / 'pretrain' / 'tiny-mix-cpu.yaml')
STEPS = 8
# torchrun sets the RANK/WORLD_SIZE/MASTER_* that `composer -n` sets, without importing composer in the launcher
# too (~17 s here); the composer launcher itself is under test in test_train_e2e.py and test_preempt_dist.py
TORCHRUN = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node']
TORCHRUN_ENV = {k: v for k, v in os.environ.items() if k != 'NODE_RANK'}   # plain torchrun (env.launcher_defaults)


def _run(tok, mds, run_dir, ranks=1, workers=0, extra=()):
    o = {'variables.tokenizer_dir': tok, 'variables.data_root': mds, 'variables.run_dir': run_dir,
         'variables.max_seq_len': TINY_SEQ, 'model.vocab_size': TINY_VOCAB, 'model.d_model': 32, 'model.n_heads': 2,
         'model.n_layers': 1, 'global_train_batch_size': 8, 'device_train_microbatch_size': 8 // ranks,
         'device_eval_batch_size': 8, 'eval_subset_num_batches': 1, 'eval_first': False,
         'eval_interval': f'{STEPS}ba', 'max_duration': f'{STEPS}ba', 'save_interval': '1ba',
         'save_num_checkpoints_to_keep': -1, 'python_log_level': 'warning', 'console_log_interval': '100ba',
         'scheduler.t_warmup': '2ba', 'train_loader.num_workers': workers,
         'callbacks.mix_logger.record_samples': f'{run_dir}/ids', 'callbacks.mix_logger.log_interval': 1}
    args = [f'{k}={v}' for k, v in o.items()] + list(extra)
    launcher = [*TORCHRUN, str(ranks)] if ranks > 1 else [sys.executable]
    r = subprocess.run([*launcher, 'scripts/train.py', YAML, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=1200, env=TORCHRUN_ENV)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return run_dir


def _ids(run_dir):
    """{step: [(global_index, stream, sample_id), ...]} over all ranks, in global order."""
    out = {}
    for f in sorted(run_dir.glob('ids.rank*.jsonl')):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            out.setdefault(row['step'], []).extend(zip(row['global_index'], row['stream'], row['sample_id']))
    return {k: sorted(v) for k, v in out.items()}


def _weights(run_dir):
    rows = [json.loads(x) for x in (run_dir / 'metrics.jsonl').read_text().splitlines()]
    return {r['step']: {k: v for k, v in r.items() if k.endswith('/weight')} for r in rows if 'mix/code/weight' in r}


def test_resume_plain_schedule_across_ranks_and_workers(tiny_tokenizer, tiny_mds, tmp_path):
    full = _run(tiny_tokenizer, tiny_mds, tmp_path / 'full', ranks=1, workers=0)
    ref = _ids(full)
    assert sorted(ref) == list(range(STEPS)) and all(len(v) == 8 for v in ref.values())
    assert [g for s in range(STEPS) for g, _, _ in ref[s]] == list(range(8 * STEPS))
    k = random.Random(0).randrange(2, STEPS - 1)
    # resume the 1-rank checkpoint with 2 ranks x 2 workers: the same global sequence continues
    res = _run(tiny_tokenizer, tiny_mds, tmp_path / 'resumed', ranks=2, workers=2,
               extra=[f'load_path={full}/checkpoints/ep0-ba{k}-rank0.pt'])
    got = _ids(res)
    assert sorted(got) == list(range(k, STEPS))
    assert all(got[s] == ref[s] for s in got), k


def test_resume_adaptive_with_and_without_workers(tiny_tokenizer, tiny_mds, tmp_path):
    adaptive = 'train_loader.adaptive={eta: 0.5, ema: 0.5, floor: 0.05, update_every: 1, lag: 4}'
    full = _run(tiny_tokenizer, tiny_mds, tmp_path / 'full', workers=2, extra=[adaptive])
    ref, wref = _ids(full), _weights(full)
    assert len({json.dumps(w, sort_keys=True) for w in wref.values()}) > 2      # the weights did move
    k = random.Random(1).randrange(2, STEPS - 1)
    res = _run(tiny_tokenizer, tiny_mds, tmp_path / 'resumed', workers=0,
               extra=[adaptive, f'load_path={full}/checkpoints/ep0-ba{k}-rank0.pt'])
    got, wgot = _ids(res), _weights(res)
    assert sorted(got) == list(range(k, STEPS)) and all(got[s] == ref[s] for s in got), k
    assert all(wgot[s] == wref[s] for s in wgot), k
