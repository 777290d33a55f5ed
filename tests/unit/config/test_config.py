import copy
import subprocess
import sys

import pytest

from foundry_ext import config
from foundry_ext.errors import UserError

from conftest import ROOT, TINY_SEQ, TINY_VOCAB

YAML = ROOT / 'yamls' / 'pretrain' / 'tiny-cpu.yaml'


@pytest.fixture
def cfg(tiny_tokenizer, tiny_mds):
    return config.load(YAML, [f'variables.tokenizer_dir={tiny_tokenizer}', f'variables.data_root={tiny_mds}',
                              f'model.vocab_size={TINY_VOCAB}', f'variables.max_seq_len={TINY_SEQ}'])


def test_shipped_yaml_is_valid(cfg):
    config.validate(cfg)
    assert cfg['model']['max_seq_len'] == TINY_SEQ  # interpolation resolved


def _problems(cfg):
    with pytest.raises(UserError) as e:
        config.validate(cfg)
    return str(e.value)


def test_unknown_key_did_you_mean(cfg):
    cfg['optimzer'] = cfg['optimizer']
    cfg['model']['n_layer'] = 2
    cfg['model']['attn_config']['rope_thetta'] = 1.0
    msg = _problems(cfg)
    assert "unknown key optimzer; did you mean 'optimizer'?" in msg
    assert "unknown key model.n_layer; did you mean 'n_layers'?" in msg
    assert "did you mean 'rope_theta'?" in msg


def test_wrong_type_names_key_and_type(cfg):
    c = copy.deepcopy(cfg)
    c['model']['d_model'] = '128'
    assert "model.d_model must be an integer, got str '128'" in _problems(c)
    c = copy.deepcopy(cfg)
    c['eval_first'] = 'yes'
    assert 'eval_first must be true/false' in _problems(c)
    c = copy.deepcopy(cfg)
    c['max_duration'] = '10 steps'
    assert 'max_duration' in _problems(c)


def test_missing_data_folder(cfg, tmp_path):
    cfg['train_loader']['dataset']['root'] = str(tmp_path / 'nothing')
    assert f'data folder {tmp_path / "nothing"} does not exist' in _problems(cfg)


def test_missing_domain_split(cfg):
    cfg['train_loader']['dataset']['domains'] = ['poetry']
    assert 'poetry/train/index.json does not exist' in _problems(cfg)


def test_tokenizer_larger_than_model_vocab(cfg):
    cfg['model']['vocab_size'] = 100
    assert f'has {TINY_VOCAB} tokens but model.vocab_size is 100' in _problems(cfg)


def test_missing_tokenizer_folder(cfg, tmp_path):
    cfg['tokenizer']['name'] = str(tmp_path / 'tok')
    assert 'does not exist; build it with' in _problems(cfg)


def test_hub_name_offline(cfg, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    cfg['tokenizer']['name'] = 'EleutherAI/gpt-neox-20b'
    assert 'is not a local folder and the hub is off' in _problems(cfg)


def test_missing_required(cfg):
    del cfg['optimizer']
    assert 'required key optimizer is missing' in _problems(cfg)


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match='does not exist'):
        config.load(tmp_path / 'nope.yaml')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('model: [unclosed\n')
    with pytest.raises(UserError, match='not valid yaml'):
        config.load(bad)
    with pytest.raises(UserError, match='key=value'):
        config.load(YAML, ['lr'])
    bad.write_text('a: ${variables.nothing}\n')
    with pytest.raises(UserError, match='cannot resolve'):
        config.load(bad)


def test_fallbacks_on_cpu_without_flash():
    c = {'precision': 'amp_bf16', 'global_train_batch_size': 32, 'fsdp_config': {'sharding_strategy': 'FULL_SHARD'},
         'model': {'name': 'mpt_causal_lm', 'init_device': 'meta', 'attn_config': {'rope': True}},
         'train_loader': {'name': 'text', 'num_workers': 0, 'dataset': {}},
         'eval_loaders': [{'name': 'text', 'num_workers': 2, 'dataset': {}, 'label': 'x'}]}
    notes = config.apply_fallbacks(c, cuda=False, flash_attn=False, world_size=2)
    assert c['precision'] == 'fp32' and c['fsdp_config'] is None
    assert c['device_train_microbatch_size'] == 16
    assert c['model']['attn_config'] == {'rope': True, 'attn_impl': 'torch', 'rope_impl': 'hf'}
    assert c['model']['loss_fn'] == 'torch_crossentropy' and c['model']['init_device'] == 'cpu'
    assert c['train_loader']['prefetch_factor'] is None and c['train_loader']['persistent_workers'] is False
    assert 'prefetch_factor' not in c['eval_loaders'][0]  # workers > 0: left alone
    assert len(notes) == 8 and len(set(notes)) == len(notes)


def test_no_fallbacks_when_hardware_has_it():
    c = {'precision': 'amp_bf16', 'model': {'name': 'mpt_causal_lm', 'attn_config': {'attn_impl': 'flash'}},
         'train_loader': {'name': 'corpus_text', 'num_workers': 0, 'dataset': {}}}
    before = copy.deepcopy(c)
    assert config.apply_fallbacks(c, cuda=True, flash_attn=True) == []
    assert c == before


def test_schema_matches_llmfoundry():
    """Our pre-import schema must track LLM Foundry's TrainConfig and MPTConfig."""
    import dataclasses
    import inspect

    from llmfoundry.models.mpt.configuration_mpt import MPTConfig
    from llmfoundry.models.utils.config_defaults import attn_config_defaults
    from llmfoundry.utils.config_utils import TrainConfig

    from foundry_ext.config import schema
    assert {f.name for f in dataclasses.fields(TrainConfig)} == set(schema.TRAIN_KEYS)
    mpt = set(inspect.signature(MPTConfig.__init__).parameters) - {'self', 'kwargs'}
    assert mpt <= set(schema.MPT_KEYS)
    assert set(attn_config_defaults) <= set(schema.ATTN_KEYS)


def _run_train(*args, timeout=60):
    return subprocess.run([sys.executable, str(ROOT / 'scripts' / 'train.py'), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_train_cli_fails_fast_with_one_line(tmp_path):
    r = _run_train(str(tmp_path / 'missing.yaml'))
    assert r.returncode == 2
    assert r.stderr.startswith(f'error: config file {tmp_path / "missing.yaml"} does not exist;')
    assert r.stderr.strip().count('\n') == 0
    r = _run_train(str(YAML), 'optimizer.lrr=1', f'variables.data_root={tmp_path}/none')
    assert r.returncode == 2
    assert "unknown key optimizer.lrr; did you mean 'lr'?" in r.stderr  # checked against the optimizer
    assert f'{tmp_path}/none does not exist' in r.stderr
    assert 'Traceback' not in r.stderr
