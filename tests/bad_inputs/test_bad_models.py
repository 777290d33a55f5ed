"""Tokenizer and Hugging Face model folders: one line for what cannot work, a note for custom code."""
import json
import shutil

import pytest
from bad_helpers import only_problem, raises_one_line

from conftest import ROOT, TINY_SEQ, TINY_VOCAB

YAML = ROOT / 'yamls' / 'pretrain' / 'tiny-cpu.yaml'


@pytest.fixture
def cfg(tiny_tokenizer, tiny_mds):
    from foundry_ext.config.load import load
    return load(YAML, [f'variables.tokenizer_dir={tiny_tokenizer}', f'variables.data_root={tiny_mds}',
                       f'model.vocab_size={TINY_VOCAB}', f'variables.max_seq_len={TINY_SEQ}'])


def test_tokenizer_folder_missing(cfg, tmp_path):
    cfg['tokenizer']['name'] = str(tmp_path / 'tok')
    only_problem(cfg, f'tokenizer.name: folder {tmp_path / "tok"} does not exist')


def test_tokenizer_folder_empty(cfg, tmp_path):
    (tmp_path / 'tok').mkdir()
    cfg['tokenizer']['name'] = str(tmp_path / 'tok')
    only_problem(cfg, f'folder {tmp_path / "tok"} has no tokenizer files')


def test_tokenizer_json_truncated(cfg, tiny_tokenizer, tmp_path):
    tok = tmp_path / 'tok'
    shutil.copytree(tiny_tokenizer, tok)
    (tok / 'tokenizer.json').write_text((tok / 'tokenizer.json').read_text()[:500])
    cfg['tokenizer']['name'] = str(tok)
    only_problem(cfg, f'{tok / "tokenizer.json"} is not valid JSON', 'truncated or corrupt')


def test_tokenizer_bigger_than_model_vocab(cfg):
    cfg['model']['vocab_size'] = 100
    only_problem(cfg, f'has {TINY_VOCAB} tokens but model.vocab_size is 100')


def _hf_folder(d, *, custom=False, model_type='llama'):
    d.mkdir()
    conf = {'model_type': model_type, 'hidden_size': 64, 'num_hidden_layers': 1, 'num_attention_heads': 2,
            'intermediate_size': 128, 'vocab_size': 512}
    if custom:
        conf['auto_map'] = {'AutoModelForCausalLM': 'modeling_evil.EvilForCausalLM'}
        (d / 'modeling_evil.py').write_text('import os\n')
    (d / 'config.json').write_text(json.dumps(conf))
    return d


def _hf_cfg(folder, **extra):
    return {'model': {'name': 'hf_causal_lm', 'pretrained_model_name_or_path': str(folder), **extra}}


def test_hf_model_folder_missing(tmp_path):
    from foundry_ext.config.validate import _check_model
    ps = []
    _check_model(_hf_cfg(tmp_path / 'nope')['model'], ps)
    assert ps == [f'model.pretrained_model_name_or_path: folder {tmp_path / "nope"} does not exist']


def test_trust_remote_code_is_off_by_default(tmp_path):
    from foundry_ext.config.security import apply_security_defaults
    c = _hf_cfg(_hf_folder(tmp_path / 'm'))
    assert apply_security_defaults(c) == []
    assert c['model']['trust_remote_code'] is False


def test_custom_code_is_noted_and_not_run(tmp_path):
    from foundry_ext.config.security import apply_security_defaults
    c = _hf_cfg(_hf_folder(tmp_path / 'm', custom=True))
    notes = apply_security_defaults(c)
    assert c['model']['trust_remote_code'] is False
    assert len(notes) == 1 and 'contains custom code (modeling_evil.py, auto_map in config.json)' in notes[0]
    assert 'it is not run' in notes[0]


def test_custom_code_runs_only_when_asked(tmp_path):
    from foundry_ext.config.security import apply_security_defaults
    c = _hf_cfg(_hf_folder(tmp_path / 'm', custom=True, model_type='evil'), trust_remote_code=True)
    notes = apply_security_defaults(c)
    assert c['model']['trust_remote_code'] is True and 'it runs because model.trust_remote_code is true' in notes[0]


def test_model_that_needs_its_custom_code_is_one_line(tmp_path):
    from foundry_ext.config.security import apply_security_defaults
    c = _hf_cfg(_hf_folder(tmp_path / 'm', custom=True, model_type='evil'))
    raises_one_line(lambda: apply_security_defaults(c), "model_type 'evil' is not one transformers knows",
                    'set model.trust_remote_code: true if you trust that code')


def test_fallbacks_apply_the_security_default(tmp_path):
    from foundry_ext.config import apply_fallbacks
    c = _hf_cfg(_hf_folder(tmp_path / 'm'))
    c['precision'] = 'fp32'
    apply_fallbacks(c, cuda=False, flash_attn=False)
    assert c['model']['trust_remote_code'] is False
