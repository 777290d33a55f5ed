"""End-to-end training runs through the public command (subprocesses, ~1-2 minutes total)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_SEQ, TINY_VOCAB, run_cli

pytestmark = pytest.mark.slow
YAML = str(ROOT / 'yamls' / 'pretrain' / 'tiny-cpu.yaml')


def _overrides(tok, mds, run_dir, **extra):
    o = {'variables.tokenizer_dir': tok, 'variables.data_root': mds, 'variables.run_dir': run_dir,
         'variables.max_seq_len': TINY_SEQ, 'model.vocab_size': TINY_VOCAB, 'model.d_model': 64,
         'model.n_layers': 2, 'global_train_batch_size': 16, 'device_train_microbatch_size': 16,
         'device_eval_batch_size': 16, 'eval_subset_num_batches': 2, 'console_log_interval': '10ba',
         'python_log_level': 'warning', 'scheduler.t_warmup': '5ba', **extra}
    return [f'{k}={v}' for k, v in o.items()]


def _eval_losses(run_dir):
    out = {}
    for line in (run_dir / 'metrics.jsonl').read_text().splitlines():
        row = json.loads(line)
        for k, v in row.items():
            if k.startswith('metrics/eval/') and k.endswith('/LanguageCrossEntropy'):
                out.setdefault(k.split('/')[2], []).append((row['step'], v))
    return out


def test_single_process_run_learns_and_reports(tiny_tokenizer, tiny_mds, tmp_path):
    run = tmp_path / 'run'
    r = subprocess.run([sys.executable, 'scripts/train.py', YAML,
                        *_overrides(tiny_tokenizer, tiny_mds, run, max_duration='60ba', eval_interval='60ba',
                                    save_interval='60ba')],
                       cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = _eval_losses(run)
    assert set(losses) == {'code', 'prose', 'arithmetic', 'records'}
    for domain, pts in losses.items():
        (s0, first), (s1, last) = pts[0], pts[-1]
        assert (s0, s1) == (0, 60)
        assert last < 0.8 * first, (domain, first, last)
    assert list((run / 'checkpoints').glob('*.pt'))
    r = run_cli('report', run, '--mds', tiny_mds)
    assert r.returncode == 0, r.stderr
    report = (run / 'report.md').read_text()
    assert '| records |' in report and (run / 'loss_curve.png').stat().st_size > 10_000


@pytest.mark.skipif(shutil.which('composer', path=os.path.dirname(sys.executable)) is None,
                    reason='composer launcher not installed')
def test_two_cpu_processes(tiny_tokenizer, tiny_mds, tmp_path):
    run = tmp_path / 'run2'
    composer = os.path.join(os.path.dirname(sys.executable), 'composer')
    # The gauntlet callback too: under DDP each rank scores its share of the examples.
    mc = tmp_path / 'mc.jsonl'
    mc.write_text(''.join(json.dumps({'query': f'item {i} is', 'choices': ['red', 'green blue', 'a b c'],
                                      'gold': i % 3}) + '\n' for i in range(9)))
    gauntlet = f'{{icl_tasks: [{{label: mc, dataset_uri: {mc}, icl_task_type: multiple_choice, num_fewshot: [0]}}], ' \
               'interval: 2ba, eval_at_fit_end: false}'
    r = subprocess.run([composer, '-n', '2', 'scripts/train.py', YAML,
                        *_overrides(tiny_tokenizer, tiny_mds, run, max_duration='4ba', eval_interval='4ba',
                                    save_interval='4ba', precision='amp_bf16', **{'scheduler.t_warmup': '2ba'}),
                        f'callbacks.gauntlet={gauntlet}'],
                       cwd=ROOT, capture_output=True, text=True, timeout=1200)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert out.count('fallback: precision amp_bf16 needs CUDA') == 1  # logged once, by rank 0
    assert out.count("fallback: device_train_microbatch_size") == 0  # set explicitly above
    rows = [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines()]
    steps = [row['step'] for row in rows if 'loss/train/total' in row]
    assert max(steps) == 3
    assert any('metrics/eval/code/LanguageCrossEntropy' in row and row['step'] == 4 for row in rows)
    scored = [row for row in rows if 'gauntlet/mc/0-shot' in row]
    assert [row['step'] for row in scored] == [2, 4] and all(0 <= row['gauntlet/mc/0-shot'] <= 1 for row in scored)
