"""Models in: hf_causal_lm source folders checked before anything heavy is imported (one line each),
trust_remote_code false by default, and the bad-input lines through the real command (exit 2, no traceback)."""
import json
import subprocess
import sys

import pytest

from foundry_ext.checkpoint.hf import apply_hf_defaults, folder_problems, model_vocab_size, write_tokenizer_files
from foundry_ext.config.load import load
from foundry_ext.config.validate import problems_of

from conftest import ROOT

YAML = str(ROOT / 'yamls' / 'pretrain' / 'tiny-hf-cpu.yaml')


def _cfg(tiny_tokenizer, tiny_mds, *over):
    return load(YAML, [f'variables.tokenizer_dir={tiny_tokenizer}', f'variables.data_root={tiny_mds}', *over])


def _folder(tmp_path, name, config=None, weights=False, code=False):
    d = tmp_path / name
    d.mkdir()
    if config is not None:
        (d / 'config.json').write_text(json.dumps(config))
    if weights:
        (d / 'model.safetensors').write_bytes(b'x')
    if code:
        (d / 'modeling_custom.py').write_text('# custom\n')
    return d


@pytest.mark.parametrize('arch', ['tiny-llama', 'tiny-mistral', 'tiny-qwen2', 'tiny-gpt2'])
def test_shipped_config_folders_validate(arch, tiny_tokenizer, tiny_mds):
    cfg = _cfg(tiny_tokenizer, tiny_mds, f'model.pretrained_model_name_or_path={ROOT}/yamls/models/{arch}')
    assert problems_of(cfg) == []
    assert model_vocab_size(cfg['model']) == 4096


def test_folder_problems_one_line_each(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    llama = {'model_type': 'llama', 'vocab_size': 64}
    cases = [
        ({'pretrained_model_name_or_path': str(tmp_path / 'gone')}, 'does not exist'),
        ({'pretrained_model_name_or_path': str(_folder(tmp_path, 'empty'))}, 'has no config.json'),
        ({'pretrained_model_name_or_path': str(_folder(tmp_path, 'cfg', llama))}, 'has config.json but no weights'),
        ({'pretrained_model_name_or_path': 'org/model'}, 'is not a local folder and the hub is off'),
        ({'pretrained_model_name_or_path': str(_folder(tmp_path, 'mpt', {'model_type': 'mpt', 'auto_map': {
            'AutoModelForCausalLM': 'modeling_mpt.MPTForCausalLM'}}, weights=True))}, "needs LLM Foundry's MPT code"),
        ({'pretrained_model_name_or_path': str(_folder(tmp_path, 'odd', {'model_type': 'my_arch', 'auto_map': {
            'AutoModelForCausalLM': 'modeling_custom.M'}}, weights=True, code=True))}, 'trust_remote_code: true if you trust'),
    ]
    for model, want in cases:
        lines = folder_problems({'name': 'hf_causal_lm', **model})
        assert len(lines) == 1 and want in lines[0] and '\n' not in lines[0], (model, lines)
    ok = {'name': 'hf_causal_lm', 'pretrained': False, 'pretrained_model_name_or_path': str(tmp_path / 'cfg')}
    assert folder_problems(ok) == []
    trusted = {'name': 'hf_causal_lm', 'trust_remote_code': True, 'pretrained_model_name_or_path': str(tmp_path / 'mpt')}
    assert folder_problems(trusted) == []


def test_tokenizer_larger_than_the_embedding(tiny_tokenizer, tiny_mds):
    cfg = _cfg(tiny_tokenizer, tiny_mds, 'model.config_overrides={vocab_size: 100}')
    (line,) = problems_of(cfg)
    assert 'has 512 tokens but the model' in line and 'has 100 rows' in line and 'config_overrides.vocab_size' in line


def test_trust_remote_code_is_false_unless_set(tmp_path):
    d = _folder(tmp_path, 'coded', {'model_type': 'llama'}, weights=True, code=True)
    model = {'name': 'hf_causal_lm', 'pretrained_model_name_or_path': str(d)}
    (note,) = apply_hf_defaults(model)
    assert model['trust_remote_code'] is False and 'modeling_custom.py' in note and 'not run' in note
    mine = {'name': 'hf_causal_lm', 'pretrained_model_name_or_path': str(d), 'trust_remote_code': True}
    assert apply_hf_defaults(mine) == [] and mine['trust_remote_code'] is True
    assert apply_hf_defaults({'name': 'mpt_causal_lm'}) == []


def test_tokenizer_files_round_trip(tmp_path):
    files = {'tokenizer_config.json': {'file_extension': '.json', 'content': {'chat_template': '{{ x }}'}},
             'merges.txt': {'file_extension': '.txt', 'content': ['#version: 0.2', 'a b', '']},
             'chat_template': {'file_extension': '.jinja', 'content': '{{ y }}'}}
    assert sorted(write_tokenizer_files(files, tmp_path)) == ['chat_template.jinja', 'merges.txt', 'tokenizer_config.json']
    assert (tmp_path / 'merges.txt').read_text() == '#version: 0.2\na b\n\n'
    assert json.loads((tmp_path / 'tokenizer_config.json').read_text())['chat_template'] == '{{ x }}'


@pytest.mark.parametrize('override,want', [
    ('model.pretrained_model_name_or_path=/nonexistent/model', 'folder /nonexistent/model does not exist'),
    ('model.pretrained=true', 'has config.json but no weights'),
    ('model.config_overrides={vocab_size: 100}', "the model's embedding"),
    ('model.peft_config={r: 4, lora_alph: 8}', "did you mean 'lora_alpha'"),
])
def test_bad_hf_inputs_exit_2_with_one_line(override, want, tiny_tokenizer, tiny_mds):
    r = subprocess.run([sys.executable, 'scripts/train.py', YAML, f'variables.tokenizer_dir={tiny_tokenizer}',
                        f'variables.data_root={tiny_mds}', override], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    err = r.stderr.strip()
    assert r.returncode == 2 and want in err and len(err.splitlines()) == 1 and 'Traceback' not in err, err
