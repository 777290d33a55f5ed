"""Two gloo processes: SIGTERM to one rank stops both at the same step with one checkpoint (exit 75);
re-running the command resumes from it."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_SEQ, TINY_VOCAB

pytestmark = pytest.mark.slow
COMPOSER = os.path.join(os.path.dirname(sys.executable), 'composer')


@pytest.mark.skipif(shutil.which('composer', path=os.path.dirname(sys.executable)) is None,
                    reason='composer launcher not installed')
def test_sigterm_to_one_rank_stops_all(tiny_tokenizer, tiny_mds, tmp_path):
    run = tmp_path / 'run'
    o = {'variables.tokenizer_dir': tiny_tokenizer, 'variables.data_root': tiny_mds, 'variables.run_dir': run,
         'variables.max_seq_len': TINY_SEQ, 'model.vocab_size': TINY_VOCAB, 'model.d_model': 32, 'model.n_heads': 2,
         'model.n_layers': 1, 'global_train_batch_size': 8, 'device_train_microbatch_size': 4,
         'device_eval_batch_size': 8, 'eval_subset_num_batches': 1, 'max_duration': '6ba', 'save_interval': '3ba', 'scheduler.t_warmup': '2ba',
         'eval_interval': '6ba', 'eval_first': 'false', 'python_log_level': 'error', 'log_to_console': 'false',
         'callbacks.mfu_monitor.peak_flops': 1e12, 'code_paths': f"[{ROOT / 'bench' / 'resume_faults.py'}]"}
    cmd = [COMPOSER, '-n', '2', 'scripts/train.py', str(ROOT / 'yamls' / 'pretrain' / 'tiny-cpu.yaml'),
           *[f'{k}={v}' for k, v in o.items()]]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200,
                       env={**os.environ, 'FOUNDRY_EXT_FAULT': 'term@step:1@rank1'})
    out = r.stdout + r.stderr
    assert r.returncode == 75, out[-3000:]
    assert 'Traceback' not in out
    assert 'stopped by SIGTERM at step 2; checkpoint' in out
    assert sorted(p.name for p in (run / 'checkpoints').glob('*.pt')) == ['ep0-ba2-rank0.pt', 'latest-rank0.pt']
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200,
                       env={**os.environ, 'FOUNDRY_EXT_FAULT': ''})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert 'resuming run tiny-cpu from' in out and 'at step 2' in out
    rows = [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines()]
    assert [x['step'] for x in rows if 'loss/train/total' in x] == list(range(6))
