"""SFT end to end through the public commands: instruction data -> train (MPT from jsonl, packed; an HF
Llama folder, packed through foundry_hf_causal_lm) -> the chat template in the checkpoint -> sft-eval and
the held-out gauntlet tasks."""
import subprocess
import sys

import pytest
import torch

from foundry_ext.safeload import safe_load

from conftest import ROOT, TINY_VOCAB, run_cli

pytestmark = pytest.mark.slow


def _run(args, timeout=600):
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    return r


def _cli(*args):
    """The verbs that do not train (sft-data, sft-eval, eval) in this process: no ~20 s start-up each."""
    r = run_cli(*args)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    return r


def _common(run, data, **extra):
    # 512: the tiny tokenizer renders a chat as ~140 tokens, so 128 would truncate every example and pack none
    o = {'variables.data': data, 'variables.max_seq_len': 512, 'run_name': run.name, 'variables.run_dir': run,
         'max_duration': '6ba', 'eval_interval': '6ba', 'global_train_batch_size': 8,
         'device_train_microbatch_size': 4, 'device_eval_batch_size': 8, 'console_log_interval': '2ba',
         'scheduler.t_warmup': '2ba', 'python_log_level': 'info', **extra}
    return [f'{k}={v}' for k, v in o.items()]


@pytest.fixture(scope='module')
def sft_data(tiny_corpus, tiny_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp('sft') / 'data'
    _cli('sft-data', '--corpus', tiny_corpus, '--tokenizer', tiny_tokenizer, '--out', out, '--n_train', '120',
         '--n_heldout', '16')
    return out


def test_sft_mpt_packed_from_jsonl(sft_data, tiny_tokenizer, tmp_path):
    run = tmp_path / 'sft-mpt'
    r = _run(['scripts/train.py', 'yamls/finetune/sft-mpt-cpu.yaml',
              *_common(run, sft_data, **{'variables.tokenizer_dir': tiny_tokenizer, 'load_path': 'null',
                                         'model.vocab_size': TINY_VOCAB, 'model.d_model': 64, 'model.n_layers': 2})])
    assert 'examples/row (auto)' in r.stderr and 'chat template chatml' in r.stderr
    ck = max((run / 'checkpoints').glob('ep*-rank0.pt'), key=lambda p: p.stat().st_mtime)   # beside latest-rank0.pt
    hf = safe_load(ck)['state']['integrations']['huggingface']     # the gauntlet reads it the same safe way
    assert '<|im_start|>' in hf['tokenizer']['tokenizer_config.json']['content']['chat_template']  # saved with the model
    r = _cli('sft-eval', '--model', run, '--data', sft_data, '--out', tmp_path / 'eval.json')
    assert 'record_field' in r.stdout and 'word_problem' in r.stdout and (tmp_path / 'eval.json').is_file()
    g = sft_data / 'gauntlet'
    r = _cli('eval', ROOT / 'yamls' / 'eval' / 'starter.yaml', f'model={{run_dir: {run}}}',
             f'icl_tasks={g}/tasks.yaml', f'eval_gauntlet={g}/gauntlet.yaml', f'output_dir={tmp_path}/g',
             f'cache_dir={tmp_path}/gc', 'bootstrap_samples=50')
    assert 'sft_record_field' in r.stdout and (tmp_path / 'g' / 'results.json').is_file()


def test_sft_hf_llama_folder_packed(sft_data, tiny_tokenizer, tmp_path):
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder = tmp_path / 'llama'
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(transformers.LlamaConfig(
        vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tiny_tokenizer)).save_pretrained(folder)
    run = tmp_path / 'sft-hf'
    r = _run(['scripts/train.py', 'yamls/finetune/sft-hf-cpu.yaml',
              *_common(run, sft_data, **{'variables.model_dir': folder})])
    assert 'hf_causal_lm runs as foundry_hf_causal_lm' in r.stderr
    assert list((run / 'checkpoints').glob('*.pt'))
