"""The customization ladder through the public commands (subprocesses): pretrain the Llama-architecture MPT,
export it, LoRA on the exported folder (with LLM Foundry's hf_checkpointer on), export --merge; continued
pretraining from the Composer checkpoint (load_path, weights only) and a load_path that does not fit."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY_SEQ, TINY_VOCAB, run_cli

pytestmark = pytest.mark.slow
TINY = {'model.d_model': 64, 'model.n_layers': 2, 'model.attn_config.kv_n_heads': 2, 'model.ffn_config.ffn_hidden_size': 128,
        'model.vocab_size': TINY_VOCAB, 'model.max_seq_len': TINY_SEQ}
COMMON = {'variables.max_seq_len': TINY_SEQ, 'global_train_batch_size': 8, 'device_train_microbatch_size': 8,
          'device_eval_batch_size': 8, 'eval_subset_num_batches': 1, 'console_log_interval': '2ba',
          'python_log_level': 'warning', 'scheduler.t_warmup': '1ba', 'callbacks': '{}'}


def _train(yaml, **over):
    args = [f'{k}={v}' for k, v in {**COMMON, **over}.items()]
    return subprocess.run([sys.executable, 'scripts/train.py', str(ROOT / 'yamls' / yaml), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope='module')
def base(tiny_tokenizer, tiny_mds, tmp_path_factory):
    run = tmp_path_factory.mktemp('ladder') / 'base'
    r = _train('pretrain/tiny-llama-cpu.yaml', **TINY, **{
        'variables.tokenizer_dir': tiny_tokenizer, 'variables.data_root': tiny_mds, 'variables.run_dir': run,
        'train_loader.dataset.domains': '[code,prose,arithmetic]', 'max_duration': '8ba', 'eval_interval': '8ba',
        'save_interval': '8ba'})
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli('export', run, run / 'hf')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'verified: max |logit diff|' in r.stdout and 'no trust_remote_code needed' in r.stdout, r.stdout
    return run


def test_the_exported_run_loads_offline_and_gives_the_trained_models_logits(base):
    """Independent of the exporter's own check: the trained MPT rebuilt by hand from the checkpoint."""
    from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM
    from transformers import AutoModelForCausalLM
    sd = torch.load(base / 'checkpoints' / 'latest-rank0.pt', map_location='cpu', weights_only=False)['state']
    cfg = dict(sd['integrations']['huggingface']['model']['config']['content'])
    cfg = {k: v for k, v in cfg.items() if not k.startswith('_') and k not in ('model_type', 'architectures')}
    cfg['attn_config'] = {**cfg['attn_config'], 'attn_impl': 'torch'}
    trained = MPTForCausalLM(MPTConfig(**cfg)).eval()
    trained.load_state_dict({k[len('model.'):]: v for k, v in sd['model'].items()})
    config = json.loads((base / 'hf' / 'config.json').read_text())
    assert config['architectures'] == ['LlamaForCausalLM'] and 'auto_map' not in config
    hf = AutoModelForCausalLM.from_pretrained(str(base / 'hf'), local_files_only=True).eval()
    ids = torch.randint(0, TINY_VOCAB, (2, TINY_SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, trained(ids).logits, atol=1e-4)


def test_lora_on_the_exported_model_with_hf_checkpointer_then_merge(base, tiny_mds, tmp_path):
    from transformers import AutoModelForCausalLM

    from foundry_ext.checkpoint.export import ExportOptions, export
    run = tmp_path / 'lora'
    hf_ckpt = '{hf_checkpointer: {save_folder: ' + str(run / 'hf_ckpt') + ', save_interval: 1dur, precision: float32}}'
    r = _train('finetune/lora-records-cpu.yaml', **{
        'variables.base': base / 'hf', 'variables.data_root': tiny_mds, 'variables.run_dir': run,
        'max_duration': '4ba', 'eval_interval': '4ba', 'save_interval': '4ba', 'callbacks': hf_ckpt})
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith('foundry_ext: parameters:'))
    assert 'LoRA r=8' in line and 'trainable' in line
    total, trainable = (int(x.split()[0].replace(',', '')) for x in line.split(': ', 2)[2].split(', ')[:2])
    assert 0 < trainable < total / 5
    # LLM Foundry's hf_checkpointer still works next to our export: its adapter folder loads on the base
    (adapter,) = [p.parent for p in (run / 'hf_ckpt').rglob('adapter_config.json')]
    from peft import PeftModel
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base / 'hf')), str(adapter))
    res = export(ExportOptions(str(run), str(tmp_path / 'merged'), merge=True), log=lambda s: None)
    assert res.verdict.ok and res.architecture == 'merged LlamaForCausalLM'
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / 'merged'))
    assert not any('lora' in n for n, _ in merged.named_parameters())


def test_continued_pretraining_from_the_checkpoint(base, tiny_tokenizer, tiny_mds, tmp_path):
    ck = base / 'checkpoints' / 'latest-rank0.pt'
    over = {**TINY, 'variables.tokenizer_dir': tiny_tokenizer, 'variables.data_root': tiny_mds, 'load_path': ck,
            'max_duration': '4ba', 'eval_interval': '4ba', 'save_interval': '4ba'}
    r = _train('finetune/cpt-records-ckpt-cpu.yaml', **{**over, 'variables.run_dir': tmp_path / 'bad',
                                                          'model.attn_config.kv_n_heads': 4})
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and err[-1].startswith(f'error: load_path {ck}: tensor model.transformer.blocks.0.attn'
                                                    '.Wqkv.weight has shape [128, 64] in the checkpoint but [192, 64]')
    assert 'Traceback' not in r.stderr
    run = tmp_path / 'cpt'
    r = _train('finetune/cpt-records-ckpt-cpu.yaml', **{**over, 'variables.run_dir': run})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines()]
    first = [x for x in rows if 'metrics/eval/code/LanguageCrossEntropy' in x][0]
    assert first['step'] == 0   # the loaded weights were evaluated before training: not a random model
    base_rows = [json.loads(x) for x in (base / 'metrics.jsonl').read_text().splitlines()]
    base_code = [x['metrics/eval/code/LanguageCrossEntropy'] for x in base_rows
                 if 'metrics/eval/code/LanguageCrossEntropy' in x][-1]
    assert first['metrics/eval/code/LanguageCrossEntropy'] == pytest.approx(base_code, abs=1e-4)
    r = run_cli('report', run)
    assert r.returncode == 0, r.stderr
    text = (run / 'report.md').read_text()
    assert '| records | new |' in text and 'Forgetting on the old domains' in text
    assert torch.load is not None
