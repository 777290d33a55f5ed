"""tiny-moe-cpu trains end to end on CPU through the public command and its loss decreases."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_SEQ, TINY_VOCAB

pytestmark = pytest.mark.slow
YAML = str(ROOT / 'yamls' / 'pretrain' / 'tiny-moe-cpu.yaml')


def test_tiny_moe_cpu_learns(tiny_tokenizer, tiny_mds, tmp_path):
    run = tmp_path / 'moe'
    o = {'variables.tokenizer_dir': tiny_tokenizer, 'variables.data_root': tiny_mds, 'variables.run_dir': run,
         'variables.max_seq_len': TINY_SEQ, 'model.vocab_size': TINY_VOCAB, 'model.d_model': 64,
         'model.n_layers': 2, 'model.ffn_config.ffn_hidden_size': 128, 'global_train_batch_size': 16,
         'device_train_microbatch_size': 16, 'device_eval_batch_size': 16, 'eval_subset_num_batches': 2,
         'python_log_level': 'warning', 'scheduler.t_warmup': '5ba', 'max_duration': '50ba',
         'eval_interval': '50ba', 'save_interval': '50ba', 'callbacks.moe_monitor.log_interval': 10}
    r = subprocess.run([sys.executable, 'scripts/train.py', YAML, *[f'{k}={v}' for k, v in o.items()]],
                       cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines()]
    evals = {}
    for row in rows:
        for k, v in row.items():
            if k.startswith('metrics/eval/') and k.endswith('/LanguageCrossEntropy'):
                evals.setdefault(k.split('/')[2], []).append((row['step'], v))
    assert set(evals) == {'code', 'prose', 'arithmetic', 'records'}
    for domain, pts in evals.items():
        assert [s for s, _ in pts] == [0, 50]
        assert pts[-1][1] < 0.8 * pts[0][1], (domain, pts)
    aux = [row['loss/train/moe_aux'] for row in rows if 'loss/train/moe_aux' in row]
    assert aux and all(0 < a < 1 for a in aux)  # weighted lbl (~0.01) + z-loss reach the training loss
    mon = [row for row in rows if 'moe/layer0/max_load' in row]
    assert mon and all(row['moe/layer1/dropped_frac'] == 0 for row in mon)
