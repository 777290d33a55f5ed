"""LoRA options: model.peft_config parsed like every component's options, and checked against the model
before training (unknown target modules list the model's module names; one line, exit 2)."""
import dataclasses
import subprocess
import sys

import pytest

from foundry_ext.finetune.lora import LoraOptions, check_lora, lora_defaults
from foundry_ext.validation import ConfigError, parse

from conftest import ROOT

LLAMA = str(ROOT / 'yamls' / 'models' / 'tiny-llama')
GPT2 = str(ROOT / 'yamls' / 'models' / 'tiny-gpt2')


def _cfg(peft, src=LLAMA, **extra):
    return {'model': {'name': 'hf_causal_lm', 'pretrained_model_name_or_path': src, 'pretrained': False,
                      'peft_config': peft}, **extra}


def test_options_cover_peft_lora_config():
    from peft import LoraConfig
    assert {f.name for f in dataclasses.fields(LoraConfig)} == {f.name for f in dataclasses.fields(LoraOptions)}


def test_options_are_parsed_and_range_checked():
    o = parse(LoraOptions, {'r': 16, 'lora_alpha': 32, 'target_modules': ['q_proj'], 'layers_to_transform': [0]},
              'model.peft_config')
    assert o.r == 16 and o.peft_type == 'LORA' and o.layers_to_transform == [0]
    for bad, want in [({'r': 0}, 'r must be an integer >= 1'), ({'lora_dropout': 1.0}, 'lora_dropout must be in'),
                      ({'bias': 'some'}, "bias 'some' is not one of"), ({'peft_type': 'IA3'}, 'only LORA'),
                      ({'r': 'eight'}, 'r must be an integer'), ({'lora_alph': 1}, "did you mean 'lora_alpha'")]:
        with pytest.raises(ConfigError, match=want):
            parse(LoraOptions, bad, 'model.peft_config')


def test_defaults_fill_what_llm_foundry_insists_on():
    model = {'peft_config': {'r': 4}}
    (note,) = lora_defaults(model)
    assert model['peft_config'] == {'r': 4, 'peft_type': 'LORA', 'task_type': 'CAUSAL_LM'} and 'peft_type' in note
    assert lora_defaults(model) == [] and lora_defaults({}) == []


def test_unknown_target_module_lists_the_model_names():
    assert check_lora(_cfg({'r': 4, 'target_modules': ['q_proj', 'v_proj']})).r == 4
    assert check_lora(_cfg({'r': 4, 'target_modules': r'.*\.(q|v)_proj'})) is not None
    assert check_lora(_cfg({'r': 4}, src=GPT2)) is not None                       # PEFT's default for gpt2
    with pytest.raises(Exception, match="'qkv_proj' matches no module of LlamaForCausalLM; its module names are: "
                                        'embed_tokens, q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, '
                                        'lm_head'):
        check_lora(_cfg({'r': 4, 'target_modules': ['q_proj', 'qkv_proj']}))
    with pytest.raises(Exception, match="'c_attn' matches no module"):
        check_lora(_cfg({'r': 4, 'target_modules': 'c_attn'}))


def test_lora_needs_hf_causal_lm_and_fsdp_orig_params():
    with pytest.raises(Exception, match='LoRA needs model.name hf_causal_lm'):
        check_lora({'model': {'name': 'mpt_causal_lm', 'peft_config': {'r': 4}}})
    with pytest.raises(Exception, match='use_orig_params: true'):
        check_lora(_cfg({'r': 4, 'target_modules': ['q_proj']}, fsdp_config={'use_orig_params': False}))


def test_unknown_target_through_the_train_command(tiny_tokenizer, tiny_mds):
    r = subprocess.run([sys.executable, 'scripts/train.py', str(ROOT / 'yamls' / 'pretrain' / 'tiny-hf-cpu.yaml'),
                        f'variables.tokenizer_dir={tiny_tokenizer}', f'variables.data_root={tiny_mds}',
                        'model.peft_config={r: 4, target_modules: [query]}'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    err = [x for x in r.stderr.strip().splitlines() if not x.startswith('foundry_ext: note:')]
    assert r.returncode == 2 and len(err) == 1 and "'query' matches no module" in err[0] and 'q_proj' in err[0], err
