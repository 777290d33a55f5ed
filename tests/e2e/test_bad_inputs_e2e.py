"""A real tiny training run with fake secrets in the environment, then a resume on changed data.

No secret reaches the console, metrics.jsonl, hparams.json or a checkpoint; resuming from the
checkpoint after the data changed is refused in one line (the data fingerprint it carries)."""
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_SEQ, TINY_VOCAB

pytestmark = pytest.mark.slow
YAML = str(ROOT / 'yamls' / 'pretrain' / 'tiny-mix-cpu.yaml')
SECRETS = {'HF_TOKEN': 'hf_FAKEtoken1234567890abcdef', 'WANDB_API_KEY': 'wandbFAKEkey0987654321zyxw',
           'AWS_SECRET_ACCESS_KEY': 'awsFAKEsecret/abcdef0123456789'}


def _train(tok, mds, run, *extra):
    o = {'variables.tokenizer_dir': tok, 'variables.data_root': mds, 'variables.run_dir': run,
         'variables.max_seq_len': TINY_SEQ, 'model.vocab_size': TINY_VOCAB, 'model.d_model': 32, 'model.n_layers': 1,
         'global_train_batch_size': 8, 'device_train_microbatch_size': 8, 'device_eval_batch_size': 8,
         'max_duration': '4ba', 'eval_interval': '100ba', 'eval_first': 'false', 'save_interval': '2ba',
         'scheduler.t_warmup': '1ba', 'python_log_level': 'info', 'console_log_interval': '1ba',
         'variables.hub_token': '${oc.env:HF_TOKEN}'}          # a secret in the config itself, too
    args = [f'{k}={v}' for k, v in o.items()] + list(extra)
    return subprocess.run([sys.executable, '-m', 'foundry_ext', 'train', YAML, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env={**__import__('os').environ, **SECRETS})


def test_no_secrets_written_and_resume_on_other_data_refused(tiny_tokenizer, tiny_mds, tmp_path):
    mds = tmp_path / 'mds'
    shutil.copytree(tiny_mds, mds)
    run = tmp_path / 'run'
    r = _train(tiny_tokenizer, mds, run)
    assert r.returncode == 0, r.stderr[-3000:]
    written = [r.stdout, r.stderr] + [p.read_bytes().decode('latin-1') for p in run.rglob('*') if p.is_file()]
    assert (run / 'hparams.json').is_file() and (run / 'metrics.jsonl').is_file()
    assert list((run / 'checkpoints').glob('*.pt'))
    for name, value in SECRETS.items():
        assert not any(value in w for w in written), f'{name} leaked'
    assert '<redacted' in (run / 'hparams.json').read_text()
    # the data changes under the run: 'code' now holds another dataset
    shutil.rmtree(mds / 'code')
    shutil.copytree(mds / 'prose', mds / 'code')
    ckpt = sorted((run / 'checkpoints').glob('ep*-ba*-rank0.pt'))[-1]
    r = _train(tiny_tokenizer, mds, run, f'load_path={ckpt}', 'max_duration=6ba', 'save_interval=100ba')
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith('error:')]
    assert len(errors) == 1 and 'trained on different data than this config reads (changed: code)' in errors[0]
    assert 'Traceback' not in r.stderr
