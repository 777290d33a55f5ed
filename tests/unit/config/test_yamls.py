"""Every shipped pretraining yaml validates (data paths pointed at the test data), its parameter header
is what the formula says, and the model-level bad inputs give one clear line each."""
import copy
import importlib.util
import re

import pytest

from foundry_ext import config
from foundry_ext.errors import UserError
from foundry_ext.models.accounting import header_line, mpt_param_counts

from conftest import ROOT

YAMLS = sorted((ROOT / 'yamls' / 'pretrain').glob('*.yaml'))
OURS = [p for p in YAMLS if 'name: hf_causal_lm' not in p.read_text()]   # MPT-shaped headers


@pytest.fixture(scope='module')
def data_over(tiny_tokenizer, tiny_mds):
    return [f'variables.tokenizer_dir={tiny_tokenizer}', f'variables.data_root={tiny_mds}']


def test_expected_yamls_are_shipped():
    names = {p.stem for p in YAMLS}
    assert {'tiny-cpu', 'tiny-moe-cpu', '125m', '350m', '1b', '3b', '7b', '13b', '30b', '70b',
            '8x125m-top2', '8x1b-top2'} <= names


@pytest.mark.parametrize('path', YAMLS, ids=[p.stem for p in YAMLS])
def test_yaml_validates_and_falls_back_on_cpu(path, data_over):
    cfg = config.load(path, data_over)
    config.validate(cfg)
    big = cfg.get('fsdp_config') is not None
    notes = config.apply_fallbacks(cfg, cuda=False, flash_attn=False)
    assert cfg.get('fsdp_config') is None and cfg['precision'] == 'fp32'
    assert not big or any('fsdp_config' in n for n in notes)


@pytest.mark.parametrize('path', OURS, ids=[p.stem for p in OURS])
def test_parameter_header_is_computed(path):
    model = config.load(path)['model']
    text = path.read_text()
    assert header_line(model) in text, f'{path.name}: header says {re.findall(r"# Parameters:.*", text)}'
    if 'fsdp_config' in text:
        assert 'composer --world_size' in text and 'activation_checkpointing' in text


def test_meta_built_moe_matches_header():
    """LLM Foundry builds 8x1b-top2 (on the meta device, no memory) with the header's parameter count."""
    from llmfoundry.utils.builders import build_composer_model
    model = config.load(ROOT / 'yamls' / 'pretrain' / '8x1b-top2.yaml')['model']
    name = model.pop('name')
    model['attn_config']['attn_impl'] = 'torch'
    m = build_composer_model(name=name, cfg=model, tokenizer=None)
    assert next(m.parameters()).device.type == 'meta'
    assert sum(p.numel() for p in m.parameters()) == mpt_param_counts(model)['total']


def _problems(cfg):
    with pytest.raises(UserError) as e:
        config.validate(cfg)
    return str(e.value)


def test_model_bad_inputs(data_over):
    base = config.load(ROOT / 'yamls' / 'pretrain' / 'tiny-moe-cpu.yaml', data_over)
    c = copy.deepcopy(base)
    c['model']['attn_config']['attn_impl'] = 'fash'
    assert "attn_impl 'fash' is not one of auto, flash, sdpa, torch; did you mean 'flash'?" in _problems(c)
    c = copy.deepcopy(base)
    c['model']['attn_config']['kv_n_heads'] = 3
    assert 'kv_n_heads (3) must divide model.n_heads (4)' in _problems(c)
    c = copy.deepcopy(base)
    c['model']['d_model'] = 130
    assert 'd_model (130) must be divisible by model.n_heads (4)' in _problems(c)
    c = copy.deepcopy(base)
    c['model']['ffn_config']['moe_top_k'] = 5
    assert 'moe_top_k (5) must be between 1 and moe_num_experts (4)' in _problems(c)
    c = copy.deepcopy(base)
    c['model']['ffn_config']['moe_expert'] = 5
    assert "unknown key model.ffn_config.moe_expert; did you mean" in _problems(c)
    c = copy.deepcopy(base)
    c['model']['ffn_config'] = {'ffn_type': 'mb_dmoe', 'moe_num_experts': 4, 'moe_top_k': 2}
    if importlib.util.find_spec('megablocks') is None:  # the optional MegaBlocks backend
        assert 'ffn_type mb_dmoe needs the megablocks package' in _problems(c)
    else:
        config.validate(c)
    c = copy.deepcopy(base)
    c['model']['name'] = 'mpt_causal_lm'
    assert "attn_impl 'auto' needs model.name: foundry_mpt_causal_lm" in _problems(c)
    c = copy.deepcopy(base)
    c['model']['attn_config']['attn_impl'] = 'flash'
    config.validate(c)  # fine in itself; the machine decides
    with pytest.raises(UserError, match='attn_impl flash needs the flash-attn package .* and a CUDA device; '
                                        'attn_impl auto would use sdpa here'):
        config.apply_fallbacks(c, cuda=False, flash_attn=False)
    assert config.apply_fallbacks(copy.deepcopy(c), cuda=True, flash_attn=True) == []


def test_train_cli_bad_attn_impl_one_line(data_over):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, 'scripts/train.py', 'yamls/pretrain/tiny-moe-cpu.yaml',
                        'model.attn_config.attn_impl=flash', *data_over], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert r.stderr.strip().splitlines() == ['error: attn_impl flash needs the flash-attn package (pip install '
                                             'foundry-ext[gpu]) and a CUDA device; attn_impl auto would use sdpa here']
