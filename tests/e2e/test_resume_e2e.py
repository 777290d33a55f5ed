"""Re-running the train command: SIGTERM saves and exits 75, SIGINT during an evaluation saves and exits 75,
the re-run resumes (replaying the interrupted evaluation), a finished run exits 0."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_SEQ, TINY_VOCAB

pytestmark = pytest.mark.slow
YAML = str(ROOT / 'yamls' / 'pretrain' / 'tiny-cpu.yaml')
FAULTS = str(ROOT / 'bench' / 'resume_faults.py')


def _cmd(tok, mds, run_dir):
    o = {'variables.tokenizer_dir': tok, 'variables.data_root': mds, 'variables.run_dir': run_dir,
         'variables.max_seq_len': TINY_SEQ, 'model.vocab_size': TINY_VOCAB, 'model.d_model': 32, 'model.n_heads': 2,
         'model.n_layers': 1, 'global_train_batch_size': 8, 'device_train_microbatch_size': 8,
         'device_eval_batch_size': 8, 'eval_subset_num_batches': 1, 'max_duration': '8ba', 'save_interval': '4ba', 'scheduler.t_warmup': '2ba',
         'eval_interval': '4ba', 'python_log_level': 'error', 'log_to_console': 'false',
         'callbacks.mfu_monitor.peak_flops': 1e12, 'code_paths': f'[{FAULTS}]'}
    return [sys.executable, 'scripts/train.py', YAML, *[f'{k}={v}' for k, v in o.items()]]


def _run(cmd, fault=''):
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env={**os.environ, 'FOUNDRY_EXT_FAULT': fault})
    assert 'Traceback' not in r.stdout + r.stderr, r.stderr[-3000:]
    return r


def test_sigterm_saves_sigint_during_eval_replays_and_reruns_resume(tiny_tokenizer, tiny_mds, tmp_path):
    """One run, re-run after each stop: SIGTERM mid-step (checkpoint, exit 75), the re-run resumes and gets
    SIGINT during an evaluation (exit 75), the next re-run replays that evaluation and finishes, the last
    one finds the run finished. (One chain instead of a SIGTERM run and a SIGINT run: one start-up less.)"""
    run = tmp_path / 'run'
    cmd = _cmd(tiny_tokenizer, tiny_mds, run)
    r = _run(cmd, 'term@step:2')      # SIGTERM in the middle of the third step
    assert r.returncode == 75, r.stderr[-3000:]
    (line,) = [x for x in r.stderr.splitlines() if 'stopped by SIGTERM' in x]
    assert 'at step 3' in line and 'ep0-ba3-rank0.pt saved' in line and 'exit code 75' in line
    assert (run / 'checkpoints' / 'ep0-ba3-rank0.pt.manifest.json').is_file()
    assert not list((run / 'checkpoints').glob('.tmp-*'))
    r = _run(cmd, 'int@eval:4')       # the re-run resumes at step 3; SIGINT during the evaluation at step 4
    assert r.returncode == 75, r.stderr[-3000:]
    (line,) = [x for x in r.stderr.splitlines() if 'resuming run' in x]
    assert 'ep0-ba3-rank0.pt at step 3' in line, line
    assert 'stopped by SIGINT during the evaluation at step 4' in r.stderr, r.stderr[-3000:]
    r = _run(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'first the evaluation at step 4' in r.stderr, r.stderr[-3000:]
    rows = [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines()]
    assert [x['step'] for x in rows if 'loss/train/total' in x] == list(range(8))
    for label in ('code', 'prose', 'arithmetic', 'records'):
        assert [x['step'] for x in rows if f'metrics/eval/{label}/LanguageCrossEntropy' in x] == [0, 4, 8], label
    r = _run(cmd)
    assert r.returncode == 0 and 'already finished' in r.stderr and 'at step 8' in r.stderr, r.stderr[-3000:]
