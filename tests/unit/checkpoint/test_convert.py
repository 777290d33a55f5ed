"""MPT -> Llama: which MPT configs map, the tensor mapping, and configs trained with flash-attn run on CPU."""
import pytest
import torch
from tinyckpt import LLAMA_MPT, PLAIN_MPT

from foundry_ext.checkpoint.convert import llama_blockers, mpt_to_llama_config, mpt_to_llama_weights
from foundry_ext.checkpoint.export import runnable_here

CFG = {**LLAMA_MPT, 'vocab_size': 10}


def test_only_llama_architectures_map():
    assert llama_blockers(CFG) == []
    plain = llama_blockers({**PLAIN_MPT, 'vocab_size': 10})
    assert any('norm_type' in b for b in plain) and any('ffn_type mptmlp' in b for b in plain) and \
        any('biases' in b for b in plain)
    for change, want in [({'attn_config': {**CFG['attn_config'], 'alibi': True}}, 'positions other than RoPE'),
                         ({'attn_config': {**CFG['attn_config'], 'qk_ln': True}}, 'qk_ln'),
                         ({'attn_config': {**CFG['attn_config'], 'clip_qkv': 8.0}}, 'clip_qkv'),
                         ({'ffn_config': {'ffn_type': 'mptglu'}}, 'ffn_act_fn default (gelu)'),
                         ({'logit_scale': 0.5}, 'logit_scale'), ({'ffn_config': {'ffn_type': 'torch_dmoe'}}, 'torch_dmoe')]:
        assert any(want in b for b in llama_blockers({**CFG, **change})), (change, llama_blockers({**CFG, **change}))


def test_tensor_mapping_splits_gqa_qkv():
    d, hd, kv = 32, 8, 2
    w = {'transformer.wte.weight': torch.zeros(10, d), 'transformer.norm_f.weight': torch.ones(d),
         'transformer.blocks.0.attn.Wqkv.weight': torch.arange((d + 2 * kv * hd) * d, dtype=torch.float).view(-1, d),
         'transformer.blocks.0.attn.out_proj.weight': torch.zeros(d, d),
         'transformer.blocks.0.norm_1.weight': torch.ones(d), 'transformer.blocks.0.norm_2.weight': torch.ones(d),
         'transformer.blocks.0.ffn.up_proj.weight': torch.zeros(64, d),
         'transformer.blocks.0.ffn.gate_proj.weight': torch.zeros(64, d),
         'transformer.blocks.0.ffn.down_proj.weight': torch.zeros(d, 64)}
    out = mpt_to_llama_weights({**CFG, 'n_layers': 1}, w)
    q, k, v = (out[f'model.layers.0.self_attn.{n}_proj.weight'] for n in 'qkv')
    assert q.shape == (32, 32) and k.shape == v.shape == (16, 32)
    assert torch.equal(torch.cat([q, k, v]), w['transformer.blocks.0.attn.Wqkv.weight'])
    assert 'lm_head.weight' not in out          # tied
    cfg = mpt_to_llama_config(CFG, {'eos_token_id': 0})
    assert cfg['num_key_value_heads'] == 2 and cfg['intermediate_size'] == 64 and cfg['eos_token_id'] == 0
    with pytest.raises(ValueError, match='has no Llama counterpart'):
        mpt_to_llama_weights(CFG, {**w, 'transformer.blocks.0.attn.q_ln.weight': torch.ones(d)})
    with pytest.raises(ValueError, match='kv_n_heads 4'):
        mpt_to_llama_weights({**CFG, 'attn_config': {**CFG['attn_config'], 'kv_n_heads': 4}}, w)


def test_flash_trained_configs_run_here():
    gpu = {**CFG, 'attn_config': {**CFG['attn_config'], 'attn_impl': 'flash', 'rope_impl': 'dail'}}
    here = runnable_here(gpu)['attn_config']
    if not torch.cuda.is_available():
        assert here['attn_impl'] == 'torch' and here['rope_impl'] == 'hf'
    assert llama_blockers(gpu) == []
